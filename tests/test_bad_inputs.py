"""Issue 11, the model side: every input ``model(x)`` cannot run is refused with an error naming the
problem, and the arguments that build a model are checked before anything is built."""
import pytest
import timm
import torch

import sttabt
from conftest import TINY, tiny


@pytest.fixture(scope="module")
def model():
    return tiny("sttabt_deit_tiny", pruner="abt", keep=0.5, budget="fixed")


@pytest.mark.parametrize("make, error, message", [
    (lambda: torch.zeros(3, 32, 32), ValueError, r"4-D batch \(B, 3, 32, 32\).*unsqueeze\(0\)"),
    (lambda: torch.zeros(1, 1, 3, 32, 32), ValueError, "4-D batch"),
    (lambda: torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError, r"floating-point.*torch.uint8.*\.float\(\)"),
    (lambda: torch.zeros(2, 3, 32, 32, dtype=torch.long), TypeError, "floating-point"),
    (lambda: torch.zeros(2, 1, 32, 32), ValueError, "3-channel images.*got 1 channels"),
    (lambda: torch.zeros(2, 3, 48, 48), ValueError, r"32 x 32 images, got 48 x 48.*img_size=48\)"),
    (lambda: torch.zeros(2, 3, 32, 40), ValueError, r"img_size=\(32, 40\)"),
    (lambda: torch.zeros(0, 3, 32, 32), ValueError, "zero images"),
    (lambda: [torch.zeros(3, 32, 32)], TypeError, "torch.stack"),
])
def test_bad_batches_are_refused_by_the_model_and_its_host(model, make, error, message):
    for call in (model, model.plan, model.host):
        with pytest.raises(error, match=message):
            call(make())


def test_a_non_finite_image_is_refused_before_it_changes_the_others(model, images):
    """With a fixed budget one NaN image would change the other images' token choice: refused, named."""
    bad = images.clone()
    bad[2, 0, 5, 5] = float("nan")
    bad[4, 1, 0, 0] = float("inf")
    for call in (model, model.host):
        with pytest.raises(ValueError, match=r"2 of 7 images hold NaN or infinite values \(batch index 2, 4\)"):
            call(bad)
    # the images themselves still run, and half precision inputs are floating point too
    assert torch.isfinite(model(images)).all()
    assert model.host(images.bfloat16().float()).shape == (7, 10)


def test_the_check_stays_out_of_compilation_and_tracing(model, images, monkeypatch):
    """While torch.compile / torch.export trace the model nothing is checked (no graph break, no sync)."""
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    model.plan(bad)  # no error: the check is skipped
    monkeypatch.undo()
    with pytest.raises(ValueError, match="NaN"):
        model.plan(bad)


def test_the_host_check_is_installed_once_and_changes_no_output(images):
    host = timm.create_model("deit_tiny_patch16_224", **TINY).eval()
    with torch.no_grad():
        before = host(images)
        wrapped = sttabt.wrap(host, pruner="abt", keep=0.5)
        sttabt.STTABT(wrapped.host, wrapped.scout, wrapped.pruner)  # a second wrap of the same host
        assert len(host._forward_pre_hooks) == 1
        assert torch.equal(host(images), before)


@pytest.mark.parametrize("kwargs, message", [
    (dict(factor=0), "factor must be a whole number >= 1"),
    (dict(factor=-4), "factor must be a whole number >= 1"),
    (dict(factor=2.5), "factor must be a whole number"),
    (dict(depth=0), "depth must be a whole number of blocks >= 1"),
    (dict(depth=-1), "depth must be"),
])
def test_create_model_refuses_bad_shapes(kwargs, message):
    with pytest.raises(ValueError, match=f"sttabt_deit_tiny: {message}"):
        timm.create_model("sttabt_deit_tiny", **{**TINY, **kwargs})


def test_wrap_and_the_scout_refuse_bad_shapes():
    host = timm.create_model("deit_tiny_patch16_224", **TINY)
    with pytest.raises(ValueError, match="factor must be"):
        sttabt.wrap(host, factor=0)
    with pytest.raises(ValueError, match="factor must be"):
        sttabt.ApproxNet(host, -2)
    empty = timm.create_model("deit_tiny_patch16_224", **{**TINY, "depth": 0})
    with pytest.raises(ValueError, match="depth must be"):
        sttabt.wrap(empty)


def test_the_check_is_skipped_under_fx_tracing(model):
    """torch.fx hands the check a Proxy, not a tensor: tracing must not trip over it."""
    from sttabt.inputs import check_images

    class Checked(torch.nn.Module):
        def forward(self, x):
            check_images(x, model.host)
            return x * 2

    traced = torch.fx.symbolic_trace(Checked())
    assert torch.equal(traced(torch.ones(1, 3, 32, 32)), torch.full((1, 3, 32, 32), 2.0))
    with pytest.raises(TypeError, match="torch.stack"):
        Checked()([1.0])
