"""Analytic FLOPs (sttabt.flops) against fvcore on the same executed graph."""
import sttabt  # noqa: F401  (registers the models; fixes torchvision before timm imports it)

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sttabt.flops import FlopsReport, fvcore_flops, vit_flops, vit_flops_per_sample

REL_TOL = 0.01  # analytic vs fvcore
IMG = 224
TINY_IMG, TINY_PATCH, TINY_DIM, TINY_DEPTH, TINY_HEADS, TINY_CLASSES = 32, 8, 48, 3, 3, 10
TINY_TOKENS = (TINY_IMG // TINY_PATCH) ** 2 + 1  # 16 patches + CLS


def _fv(model, img=IMG, **kw):
    return fvcore_flops(model, torch.zeros(1, 3, img, img), **kw)


@pytest.fixture(scope="module")
def deit_s():
    return timm.create_model("deit_small_patch16_224").eval()


def _tiny():
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=TINY_IMG, patch_size=TINY_PATCH, embed_dim=TINY_DIM, depth=TINY_DEPTH,
        num_heads=TINY_HEADS, num_classes=TINY_CLASSES,
    ).eval()


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


# ---------------------------------------------------------------------------------------- dense
def test_deit_small_dense(deit_s):
    r = vit_flops(deit_s)
    fv = _fv(deit_s)
    print(f"DeiT-S dense: analytic {r.gflops:.4f} G, fvcore {fv / 1e9:.4f} G")
    assert isinstance(r, FlopsReport) and len(r.blocks) == 12
    assert r.gflops == pytest.approx(4.6, abs=0.05)
    assert r.total == pytest.approx(fv, rel=REL_TOL)
    assert r.total == pytest.approx(r.embed + sum(r.blocks) + r.head)
    # embedding: 14*14 positions * 384 out * 3 in * 16*16 kernel (3 input channels counted)
    assert r.embed == 14 * 14 * 384 * 3 * 16 * 16
    d = r.to_dict()
    assert d["gflops"] == r.gflops and d["blocks"] == list(r.blocks)


def test_deit_tiny_dense():
    m = timm.create_model("deit_tiny_patch16_224").eval()
    r = vit_flops(m)
    fv = _fv(m)
    print(f"DeiT-T dense: analytic {r.gflops:.4f} G, fvcore {fv / 1e9:.4f} G")
    assert r.gflops == pytest.approx(1.26, abs=0.03)
    assert r.total == pytest.approx(fv, rel=REL_TOL)


def test_sdpa_handle_adds_attention(deit_s):
    with_sdpa, without = _fv(deit_s), _fv(deit_s, sdpa=False)
    tokens, depth, dim = 197, 12, 384  # 196 patches + CLS, not 192
    attention = depth * 2 * tokens * tokens * dim  # 2 * H * T * T * head_dim per layer
    assert without / 1e9 == pytest.approx(4.25, abs=0.01)
    assert with_sdpa - without == attention


# --------------------------------------------------------------------- pruned, independent graph
def _attend(blk, h_kv, h_q, *, scores_only=False):
    """Attention of the n_out queries over the n_in keys/values via sliced qkv weights."""
    attn = blk.attn
    a = attn.qkv.out_features // 3
    w, b = attn.qkv.weight, attn.qkv.bias
    bq = None if b is None else b[:a]
    bkv = None if b is None else b[a:]
    B, nq, _ = h_q.shape
    nk = h_kv.shape[1]
    q = F.linear(h_q, w[:a], bq).reshape(B, nq, attn.num_heads, attn.head_dim).transpose(1, 2)
    if scores_only:
        k = F.linear(h_kv, w[a:2 * a], None if b is None else b[a:2 * a])
        k = k.reshape(B, nk, attn.num_heads, attn.head_dim).transpose(1, 2)
        return (q * attn.scale) @ k.transpose(-2, -1)
    kv = F.linear(h_kv, w[a:], bkv).reshape(B, nk, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(q, kv[0], kv[1])
    return attn.proj(o.transpose(1, 2).reshape(B, nq, a))


def _pruned_forward(model, n_in, n_out, *, head=True, last_mlp=True, scores_only=False):
    def fn(img):
        x = model.norm_pre(model._pos_embed(model.patch_embed(img)))
        for i, (blk, ni, no) in enumerate(zip(model.blocks, n_in, n_out)):
            last = i == len(model.blocks) - 1
            x = x[:, :ni]
            h = blk.norm1(x)
            if last and scores_only:
                return _attend(blk, h, h[:, :no], scores_only=True)
            x = x[:, :no] + _attend(blk, h, h[:, :no])
            if last_mlp or not last:
                x = x + blk.mlp(blk.norm2(x))
        if not head:
            return x
        x = model.norm(x)
        return model.head(x[:, 0])

    return fn


N_IN, N_OUT = [TINY_TOKENS, 11, 6], [11, 6, 1]


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(head=False, last_mlp=False),
        dict(head=False, last_attn_scores_only=True),
    ],
    ids=["full", "no-last-mlp", "last-scores-only"],
)
def test_pruned_matches_fvcore(tiny, kw):
    fn = _pruned_forward(
        tiny, N_IN, N_OUT, head=kw.get("head", True), last_mlp=kw.get("last_mlp", True),
        scores_only=kw.get("last_attn_scores_only", False),
    )
    fv = fvcore_flops(fn, torch.zeros(1, 3, TINY_IMG, TINY_IMG))
    r = vit_flops(tiny, N_IN, N_OUT, **kw)
    assert r.total == pytest.approx(fv, rel=REL_TOL)
    assert r.total == pytest.approx(fv, rel=1e-12)  # in fact exact
    counts = torch.tensor(N_IN + N_OUT[-1:]).unsqueeze(1).repeat(1, 4)
    rs = vit_flops_per_sample(tiny, counts, **kw)
    assert rs.total == pytest.approx(r.total, rel=1e-12)
    assert rs.blocks == pytest.approx(r.blocks, rel=1e-12)


def test_fvcore_batch_total(tiny):
    fn = _pruned_forward(tiny, N_IN, N_OUT)
    one = fvcore_flops(fn, torch.zeros(1, 3, TINY_IMG, TINY_IMG))
    assert fvcore_flops(fn, (torch.zeros(3, 3, TINY_IMG, TINY_IMG),)) == 3 * one


def test_dense_defaults_and_partial_counts(tiny):
    dense = vit_flops(tiny)
    assert dense.total == vit_flops(tiny, [TINY_TOKENS] * TINY_DEPTH, [TINY_TOKENS] * TINY_DEPTH).total
    assert vit_flops(tiny, n_in=N_IN, n_out=N_OUT).total == vit_flops(tiny, n_out=N_OUT).total
    assert vit_flops(tiny, n_in=N_IN).blocks[-1] == vit_flops(tiny, N_IN, [11, 6, 6]).blocks[-1]
    assert dense.total == pytest.approx(fvcore_flops(tiny, torch.zeros(1, 3, TINY_IMG, TINY_IMG)), rel=1e-12)
    with pytest.raises(ValueError):
        vit_flops(tiny, [TINY_TOKENS, 11, 6], [10, 6, 1])  # n_out[0] != n_in[1]
    with pytest.raises(ValueError):
        vit_flops(tiny, last_attn_scores_only=True)  # needs head=False


def test_per_sample_is_mean_of_samples(tiny):
    counts = torch.tensor([[17, 17, 17, 17], [12, 17, 5, 9], [4, 10, 5, 2], [1, 10, 3, 2]])
    batch = vit_flops_per_sample(tiny, counts)
    singles = [vit_flops_per_sample(tiny, counts[:, b:b + 1]) for b in range(counts.shape[1])]
    assert batch.total == pytest.approx(sum(s.total for s in singles) / len(singles), rel=1e-12)
    for layer in range(TINY_DEPTH):
        assert batch.blocks[layer] == pytest.approx(sum(s.blocks[layer] for s in singles) / len(singles))
    # each single sample equals the list API
    for b, s in enumerate(singles):
        c = counts[:, b].tolist()
        assert s.total == pytest.approx(vit_flops(tiny, c[:-1], c[1:]).total, rel=1e-12)
    # means of counts are not exact: attention is bilinear in (n_in, n_out)
    mean = counts.double().mean(1).tolist()
    assert vit_flops(tiny, mean[:-1], mean[1:]).total != pytest.approx(batch.total, rel=1e-9)


# --------------------------------------------------------------------------- convolutional stem
class _ConvStem(nn.Module):
    """conv-bn-relu (3 -> 8, stride 2) + conv-bn + projection (k4/s4): LV-ViT-like, tiny."""

    def __init__(self, dim):
        super().__init__()
        self.img_size = (TINY_IMG, TINY_IMG)
        self.num_patches = (TINY_IMG // TINY_PATCH) ** 2
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, 1, 1, groups=2, bias=False), nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.proj = nn.Conv2d(8, dim, TINY_PATCH // 2, TINY_PATCH // 2)

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        return self.proj(x).flatten(2).transpose(1, 2)


def test_conv_stem_added_not_overwritten():
    m = _tiny()
    m.patch_embed = _ConvStem(TINY_DIM)
    m.train()  # vit_flops must not update BN statistics and counts BN in inference mode
    stats = m.patch_embed.bn1.running_mean.clone()
    r = vit_flops(m)
    assert torch.equal(stats, m.patch_embed.bn1.running_mean) and m.patch_embed.training
    hw1 = (TINY_IMG // 2) ** 2
    expect = hw1 * 8 * 3 * 49 + hw1 * 8 * 2 + hw1 * 8 * 4 * 9 + hw1 * 8 * 2 + 16 * TINY_DIM * 8 * 16
    assert r.embed == expect
    m.eval()
    assert r.total == pytest.approx(fvcore_flops(m, torch.zeros(1, 3, TINY_IMG, TINY_IMG)), rel=1e-12)


# ------------------------------------------------------------------------------------- LV-ViT
def test_lvvit_small_dense():
    pytest.importorskip("sttabt.models.lvvit", reason="sttabt.models.lvvit (LV-ViT) is not written yet")
    m = timm.create_model("lvvit_small").eval()
    assert getattr(m, "aux_head", None) is not None
    r = vit_flops(m)
    fv = _fv(m)
    print(f"LV-ViT-S dense: analytic {r.gflops:.4f} G, fvcore {fv / 1e9:.4f} G")
    assert r.gflops == pytest.approx(6.6, abs=0.1)
    assert r.total == pytest.approx(fv, rel=REL_TOL)
    # aux head on every non-CLS token leaving the last layer
    assert r.head >= (197 - 1) * m.aux_head.in_features * m.aux_head.out_features
    assert math.isfinite(r.total)


@pytest.mark.parametrize("name", ["sttabt_deit_small", "sttabt_lvvit_small"])
@pytest.mark.parametrize("pruner, budget", [("abt", "fixed"), ("abt", "per_sample"), ("concrete", "per_sample")])
def test_executed_pruned_path_matches_fvcore(name, pruner, budget):
    """The analytic count of host + scout equals fvcore's count of the whole executed forward
    (scout, planning and the pruned host), within 1 %."""
    from sttabt.flops import sttabt_flops

    model = timm.create_model(name, img_size=32, patch_size=4, num_classes=10, depth=3, embed_dim=48,
                              num_heads=3, pruner=pruner, budget=budget,
                              **(dict(p_logit=-2.0) if pruner == "concrete" else dict(keep=0.4))).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        masks, _ = model.plan(x)
        analytic = sttabt_flops(model, masks, executed=True)
        per_image = sttabt_flops(model, masks)
        counted = fvcore_flops(model, (x,)) / x.shape[0]
    assert masks[:-1].mean() < 0.95, "the plan must prune"
    assert analytic.total < analytic.dense.total
    assert counted == pytest.approx(analytic.total, rel=0.01)
    if budget == "fixed":
        assert per_image.total == analytic.total
    else:  # padding to the batch maximum costs work the per-image count leaves out
        assert per_image.total <= analytic.total


def test_sttabt_deit_small_scout_cost():
    """DeiT-S dense 4.6 G; its factor-4 scout about 0.3 G, reported separately."""
    from sttabt.flops import sttabt_flops

    model = timm.create_model("sttabt_deit_small", pruner="abt", keep=0.5, budget="fixed").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        report = sttabt_flops(model, model.plan(x)[0]).to_dict()
    assert report["dense_gflops"] == pytest.approx(4.6, abs=0.05)
    assert 0.25 <= report["scout_gflops"] <= 0.4
    assert report["keep_per_layer"][0] == pytest.approx(99 / 197)


PREFIX_HOSTS = {
    "distilled": ("deit_tiny_distilled_patch16_224", {}),
    "registers": ("vit_small_patch16_224", dict(reg_tokens=4)),
    "avg": ("vit_small_patch16_224", dict(global_pool="avg", class_token=False)),
    "lvvit": ("lvvit_small", {}),
}


@pytest.mark.parametrize("kind", list(PREFIX_HOSTS))
@pytest.mark.parametrize("pruner", ["abt", "evit", "ltp"])
def test_prefix_hosts_and_online_pruners_match_fvcore(kind, pruner):
    """Every host family (class + distillation tokens, register tokens, an avg head, LV-ViT) under a
    planned and the online pruners: the analytic count equals fvcore's count of the executed pruned
    forward, within 1 % (online: the dropped tokens' queries and scores are counted too)."""
    from sttabt.flops import sttabt_flops

    if pruner == "evit" and kind == "avg":
        pytest.skip("EViT needs a class token")
    name, kwargs = PREFIX_HOSTS[kind]
    host = timm.create_model(name, img_size=32, patch_size=4, num_classes=10, depth=3, embed_dim=48, num_heads=3,
                             **kwargs).eval()
    with torch.no_grad():  # peaked attention, so that LTP's thresholds tell tokens apart
        for block in host.blocks:
            block.attn.qkv.weight[: 2 * host.embed_dim].mul_(10.0)
    options = {"abt": dict(keep=0.4), "evit": dict(keep=[1.0, 0.6, 0.4]), "ltp": dict(threshold=0.04)}[pruner]
    model = sttabt.wrap(host, pruner=pruner, **options).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        masks = model.forward_detailed(x).masks
        analytic = sttabt_flops(model, masks, executed=True)
        counted = fvcore_flops(model, (x,)) / x.shape[0]
    assert masks[:-1, :, host.num_prefix_tokens:].mean() < 0.95, "the plan must prune"
    assert analytic.total < analytic.dense.total
    # planning (back-tracking's attention rows from the scout's q and k) is left out of the analytic
    # count by convention; an avg head's back-tracking reads every row of the last layer and wider
    # sets after it: about 1.5 % of this tiny model, against well under 1 % with a class token
    planning = 0.02 if (kind, pruner) == ("avg", "abt") else 0.0
    assert counted == pytest.approx(analytic.total, rel=0.01 + planning)
