"""The scout: shapes, interpolated init, distillation loss."""
import pytest
import timm
import torch

from sttabt.approx import (ApproxNet, ScoutStudent, attention_kl, distillation_loss, drop_distillation_keys,
                          interpolate_init_, resize_linear, thin_kwargs)
from sttabt.executors import forward_masked

from conftest import TINY


@pytest.fixture
def host():
    return timm.create_model("deit_small_patch16_224", **{**TINY, "embed_dim": 96, "num_heads": 3}).eval()


def test_scout_is_thin_and_keeps_heads_and_depth(host, images):
    scout = ApproxNet(host, factor=4)
    assert scout.net.embed_dim == 24 and len(scout.net.blocks) == 3
    assert scout.net.blocks[0].attn.num_heads == 3
    assert scout.net.blocks[0].mlp.fc1.out_features == host.blocks[0].mlp.fc1.out_features // 4
    out = ScoutStudent(scout, host)(images[:2])
    assert [a.shape for a in out.attention] == [(2, 3, 65, 65)] * 3
    assert len(out.hidden) == 4 and out.logits.shape == (2, 10)
    probs = scout(images[:2], attention="probs", scores_only=True)
    assert probs.logits is None and [a.shape for a in probs.attention] == [(2, 65, 65)] * 3
    assert torch.allclose(probs.attention[1], out.attention[1].softmax(-1).mean(1), atol=1e-6)


def test_lvvit_scout_has_a_thin_stem():
    host = timm.create_model("lvvit_small", **TINY)
    scout = ApproxNet(host, factor=4)
    assert scout.net.patch_embed.stem_chans == 16 and scout.net.skip_lam == host.skip_lam


def test_resize_linear_keeps_corners_and_constant_tensors():
    t = torch.arange(12.0).reshape(3, 4)
    r = resize_linear(t, (2, 2))
    assert r.tolist() == [[0.0, 3.0], [8.0, 11.0]]
    assert torch.equal(resize_linear(torch.full((8, 6), 2.5), (2, 3)), torch.full((2, 3), 2.5))


def test_interpolated_init_beats_random_on_attention(host, images):
    with torch.no_grad():
        teacher = forward_masked(host, images, record=True)
        kls = {}
        for init in ("interpolate", "random"):
            torch.manual_seed(0)
            student = ApproxNet(host, factor=4, init=init)(images, attention="logits")
            kls[init] = torch.stack([attention_kl(t, s) for t, s in zip(teacher.attention, student.attention)]).mean()
    assert kls["interpolate"] < kls["random"]


def test_distillation_loss_parts_and_gradient(host, images):
    scout = ScoutStudent(ApproxNet(host, factor=4), host)
    with torch.no_grad():
        teacher = forward_masked(host, images, record=True)
    losses = distillation_loss(scout(images), teacher, scout.hidden_proj)
    assert torch.isclose(losses.total, losses.attention + 0.01 * losses.hidden + losses.embedding + losses.prediction)
    losses.total.backward()
    assert scout.net.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert scout.hidden_proj.weight.grad.abs().sum() > 0
    # the teacher against itself: zero attention KL
    assert attention_kl(teacher.attention[0], teacher.attention[0]) < 1e-6


def test_a_few_distillation_steps_lower_the_loss(host, images):
    scout = ScoutStudent(ApproxNet(host, factor=4), host)
    opt = torch.optim.AdamW(scout.parameters(), lr=1e-3)
    with torch.no_grad():
        teacher = forward_masked(host, images, record=True)
    first = None
    for _ in range(15):
        loss = distillation_loss(scout(images), teacher, scout.hidden_proj).total
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_bad_factor_and_init(host):
    with pytest.raises(ValueError, match="factor"):
        ApproxNet(host, factor=5)
    with pytest.raises(ValueError, match="init"):
        ApproxNet(host, init="zeros")


def test_student_is_the_whole_thin_copy_and_trains_the_planning_scout_in_place(host, images):
    """The planning scout holds only what planning runs; the student adds the rest back (shared
    parameters): its output is exactly that of a complete interpolated thin copy."""
    scout = ApproxNet(host, factor=4)
    student = ScoutStudent(scout, host)
    full = type(host)(**thin_kwargs(host, 4))
    interpolate_init_(full, host)
    with torch.no_grad():
        got, want = student(images), forward_masked(full, images, record=True)
        planned = scout(images, attention="logits")
    torch.testing.assert_close(got.logits, want.logits)
    for a, b, c in zip(got.attention, want.attention, planned.attention):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(c, b)
    assert not any(k.startswith(("norm.", "head.")) or ".mlp." in k and k.startswith("blocks.2")
                   for k in scout.net.state_dict())
    assert student.full.blocks[0] is scout.net.blocks[0]
    assert student.full.blocks[-1].attn.qkv is scout.net.blocks[-1].attn.qkv
    before = scout.net.blocks[0].attn.qkv.weight.detach().clone()
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    distillation_loss(student(images), forward_masked(host, images, record=True), student.hidden_proj).total.backward()
    opt.step()
    assert not torch.equal(before, scout.net.blocks[0].attn.qkv.weight)
    with pytest.raises(RuntimeError, match="only in distillation"):
        scout.net.blocks[-1].mlp(torch.zeros(1, 24))


def test_old_scout_files_with_distillation_parts_still_load(host):
    """Scouts saved before the split kept the last MLP, head and hidden_proj: those keys are dropped."""
    scout = ApproxNet(host, factor=4)
    student = ScoutStudent(scout, host)
    old = {f"net.{k}": v for k, v in student.full.state_dict().items()}
    old.update({f"hidden_proj.{k}": v for k, v in student.hidden_proj.state_dict().items()})
    assert set(old) - set(scout.state_dict()), "the old layout has more keys"
    state = drop_distillation_keys(old, scout)
    assert set(state) == set(scout.state_dict())
    fresh = ApproxNet(host, factor=4, init="random")
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.net.blocks[1].attn.qkv.weight, scout.net.blocks[1].attn.qkv.weight)
