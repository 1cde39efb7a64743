"""Shared fixtures: tiny hosts so that every test runs in seconds on 2 CPU cores."""
from pathlib import Path

import pytest
import torch

import sttabt  # noqa: F401  (registers the models; fixes torchvision first)
import timm

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY = dict(img_size=32, patch_size=4, num_classes=10, depth=3, embed_dim=48, num_heads=3)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def images():
    return torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def tiny(name: str = "sttabt_deit_small", **kwargs):
    """A tiny registered STTABT model in eval mode."""
    return timm.create_model(name, **{**TINY, **kwargs}).eval()


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test saying what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (the ../shared/data folder beside the checkout)")
    return path
