"""bfloat16: autocast (eval and train) and bfloat16 weights in every executor of both packages,
close to float32; tools/benchmark.py --dtype bfloat16 on the CPU."""
import sys
from pathlib import Path

import pytest
import timm
import torch

from conftest import TINY
from test_ltp_models import MODES, batch, host_model, ltp_from

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import benchmark  # noqa: E402

SMALL = {**TINY, "depth": 2}
BF16_ATOL = 0.1  # bfloat16 keeps 8 bits of mantissa: logits of O(1) agree to about 1e-2


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.fixture
def x():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("name", ["sttabt_deit_tiny", "sttabt_lvvit_small"])
@pytest.mark.parametrize("executor", ["masked", "pruned"])
def test_eval_under_autocast_matches_float32(name, executor, x):
    """The reused attention buffer takes the autocast dtype (it crashed with ``out=`` before)."""
    model = timm.create_model(name, **SMALL).eval()
    with torch.no_grad():
        want = model.forward_detailed(x, executor=executor)
        with autocast():
            got = model.forward_detailed(x, executor=executor)
            features = model.forward_features(x, executor=executor)
    assert got.logits.dtype == torch.bfloat16 and torch.isfinite(features).all()  # layer norms stay float32
    agree = (got.masks == want.masks).float().mean()
    assert agree > 0.9, "the plan barely changes"
    if torch.equal(got.masks, want.masks):
        torch.testing.assert_close(got.logits.float(), want.logits, atol=BF16_ATOL, rtol=0)


@pytest.mark.parametrize("name", ["sttabt_deit_tiny", "sttabt_lvvit_small"])
def test_training_under_autocast_reaches_every_parameter(name, x):
    model = timm.create_model(name, **SMALL).train()
    with autocast():
        loss = model(x).float().logsumexp(-1).mean()
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("name", ["sttabt_deit_tiny", "sttabt_lvvit_small"])
def test_bfloat16_weights_pruned_equals_masked(name, x):
    model = timm.create_model(name, **SMALL).eval()
    with torch.no_grad():
        want = model(x)
        half = model.to(torch.bfloat16)
        masked, pruned = half(x.bfloat16(), executor="masked"), half(x.bfloat16(), executor="pruned")
    assert pruned.dtype == torch.bfloat16
    torch.testing.assert_close(pruned.float(), masked.float(), atol=BF16_ATOL, rtol=0)
    assert (pruned.float() - want).abs().max() < 4 * BF16_ATOL


# one online pruner (LTP thresholds) and one planned (STTABT concrete): each runs masked in training
# and pruned in eval
LTP_MODES = [m for m in MODES if m["prune_mode"] in ("absolute_threshold", "sttabt_concrete")][::-1][:2]


@pytest.mark.parametrize("prune", LTP_MODES, ids=lambda p: p["prune_mode"])
def test_ltp_nlp_under_autocast_and_in_bfloat16(prune):
    host = host_model("bert")
    model = ltp_from(host, "bert", **prune)
    ids, mask = batch("bert")
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        with autocast():
            got = model(input_ids=ids, attention_mask=mask).logits  # eval: the pruned executor
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    assert (got.float() - want).abs().max() < 0.5  # a threshold decision may flip; the scale holds
    model.train()
    with autocast():
        out = model(input_ids=ids, attention_mask=mask, labels=torch.zeros(len(ids), dtype=torch.long))
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    half = model.eval().to(torch.bfloat16)
    with torch.no_grad():
        logits = half(input_ids=ids, attention_mask=mask).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_benchmark_runs_in_bfloat16_on_the_cpu(capsys):
    code = benchmark.main(["--model", "sttabt_deit_tiny", "--img-size", "32", "--keep", "0.5", "--dtype", "bfloat16",
                           "--batch-size", "2", "--warmup", "1", "--repeats", "1", "--json"])
    assert code in (0, None)
    assert '"pruned_img_s"' in capsys.readouterr().out
