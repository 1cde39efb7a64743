"""Dense LV-ViT (sttabt.models.lvvit): layout, residual scaling, output rule, checkpoints, errors."""
import pytest
import torch

import sttabt  # noqa: F401  (registers the models; fixes the torchvision import on CPU torch first)
import sttabt.models.lvvit as lvvit  # noqa: E402  (registers lvvit_small / lvvit_medium)
import timm  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

TINY = dict(num_classes=10, img_size=32, patch_size=4, depth=2, embed_dim=48, num_heads=3)


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return timm.create_model("lvvit_small", **{**TINY, **overrides}).eval()


def images(batch=2, size=32, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def reference_layout(depth, dim, mlp_ratio, patch, img, num_classes, stem=64, in_chans=3):
    """Parameter shapes of the reference LV-ViT (tlt/models/lvvit.py with p_emb='4_2', return_dense)."""
    hidden, grid, k = int(dim * mlp_ratio), img // patch, patch // 2
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, grid * grid + 1, dim),
              "patch_embed.conv1.weight": (stem, in_chans, 7, 7),
              "patch_embed.conv2.weight": (stem, stem, 3, 3), "patch_embed.conv3.weight": (stem, stem, 3, 3),
              "patch_embed.proj.weight": (dim, stem, k, k), "patch_embed.proj.bias": (dim,),
              "norm.weight": (dim,), "norm.bias": (dim,),
              "head.weight": (num_classes, dim), "head.bias": (num_classes,),
              "aux_head.weight": (num_classes, dim), "aux_head.bias": (num_classes,)}
    for i in (1, 2, 3):
        shapes.update({f"patch_embed.bn{i}.weight": (stem,), f"patch_embed.bn{i}.bias": (stem,)})
    for b in range(depth):
        p = f"blocks.{b}."
        shapes.update({p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
                       p + "attn.qkv.weight": (3 * dim, dim),
                       p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
                       p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
                       p + "mlp.fc1.weight": (hidden, dim), p + "mlp.fc1.bias": (hidden,),
                       p + "mlp.fc2.weight": (dim, hidden), p + "mlp.fc2.bias": (dim,)})
    bn_buffers = ("running_mean", "running_var", "num_batches_tracked")
    buffers = {f"patch_embed.bn{i}.{n}" for i in (1, 2, 3) for n in bn_buffers}
    return shapes, buffers


def test_tiny_model_is_a_timm_vit_with_the_lvvit_stem():
    model = tiny()
    assert isinstance(model, lvvit.LVViT) and isinstance(model, VisionTransformer)
    stem = model.patch_embed
    assert isinstance(stem, lvvit.LVViTStem)
    assert stem.conv1.stride == (2, 2) and stem.conv1.kernel_size == (7, 7) and stem.conv1.bias is None
    assert stem.proj.kernel_size == (2, 2) and stem.proj.stride == (2, 2) and stem.proj.bias is not None
    assert stem.grid_size == (8, 8) and stem.num_patches == 64 and model.pos_embed.shape == (1, 65, 48)
    assert all(isinstance(b, lvvit.LVViTBlock) for b in model.blocks)
    assert model.has_class_token and model.global_pool == "token"
    assert model(images()).shape == (2, 10)
    assert timm.create_model("lvvit_small", stem_chans=16, **TINY).patch_embed.conv1.out_channels == 16


def test_lvvit_small_matches_the_reference_layout_and_runs_at_224():
    torch.manual_seed(0)
    model = timm.create_model("lvvit_small").eval()
    shapes, buffers = reference_layout(depth=16, dim=384, mlp_ratio=3, patch=16, img=224, num_classes=1000)
    params = dict(model.named_parameters())
    assert {k: tuple(v.shape) for k, v in params.items()} == shapes
    assert set(model.state_dict()) == set(shapes) | buffers
    expected = sum(torch.Size(s).numel() for s in shapes.values())
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == expected
    assert abs(n_params - 26.2e6) / 26.2e6 < 0.01  # the paper's LV-ViT-S size
    assert isinstance(model.norm, torch.nn.LayerNorm) and model.norm.eps == 1e-5
    cfg = model.pretrained_cfg
    assert cfg["crop_pct"] == 0.9 and cfg["interpolation"] == "bicubic" and cfg["first_conv"] == "patch_embed.conv1"
    assert timm.create_model("lvvit_medium", depth=1).pretrained_cfg["crop_pct"] == 1.0
    with torch.no_grad():
        out = model(images(batch=1, size=224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_qkv_has_no_bias_and_blocks_halve_residual_branches():
    model = tiny()
    for block in model.blocks:
        assert block.attn.qkv.bias is None and block.attn.proj.bias is not None
        assert isinstance(block.ls1, lvvit.ResidualScale) and block.ls1.scale == 0.5
        assert not any(k.startswith(("ls1", "ls2")) for k in block.state_dict())
    block = model.blocks[0]
    x = torch.randn(2, 65, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = x + block.attn(block.norm1(x)) / 2.0
        y = y + block.mlp(block.norm2(y)) / 2.0
        torch.testing.assert_close(block(x), y)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_output_is_cls_head_plus_half_aux_max_in_both_modes(mode):
    model = tiny().train(mode == "train")
    x = images()
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)  # same batch, so train-mode BatchNorm gives the same features
        manual = model.head(feats[:, 0]) + lvvit.AUX_WEIGHT * model.aux_head(feats[:, 1:]).max(dim=1).values
        torch.testing.assert_close(out, manual)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats[:, 0])


def test_token_mask_keeps_masked_tokens_out_of_the_aux_max():
    model = tiny()
    with torch.no_grad():
        feats = model.forward_features(images())
        w = model.aux_head.weight[3]
        feats[:, 5] = 1e6 * w / w.square().sum()  # token 5 gives class 3 an aux logit of about 1e6
        assert (model.forward_head(feats)[:, 3] > 1e5).all()
        mask = torch.ones(feats.shape[:2], dtype=torch.bool)
        mask[:, 5] = False
        without_token = torch.cat([feats[:, :5], feats[:, 6:]], dim=1)
        expected = model.forward_head(without_token)
        torch.testing.assert_close(model.forward_head(feats, token_mask=mask), expected)
        torch.testing.assert_close(model.forward_head(feats, token_mask=mask.float()), expected)
        only_cls = torch.zeros_like(mask)
        only_cls[:, 0] = True  # no real patch token: no aux term
        torch.testing.assert_close(model.forward_head(feats, token_mask=only_cls), model.head(feats[:, 0]))
        with pytest.raises(ValueError, match="token_mask must have shape"):
            model.forward_head(feats, token_mask=mask[:, 1:])


def _reference_checkpoint(model, wrapper="model"):
    return {wrapper: {"module." + k: v.clone() for k, v in model.state_dict().items()}, "epoch": 300}


@pytest.mark.parametrize("wrapper", ["model", "state_dict", "state_dict_ema"])
def test_reference_checkpoint_loads_and_reproduces_outputs(wrapper, tmp_path):
    source, target = tiny(seed=0), tiny(seed=1)
    x = images()
    with torch.no_grad():
        source(x)  # nothing changes in eval mode; outputs below must still match exactly
        assert not torch.equal(source(x), target(x))
        path = tmp_path / "lvvit.pth"
        torch.save(_reference_checkpoint(source, wrapper), path)
        assert lvvit.load_lvvit_checkpoint(target, path) is target
        assert torch.equal(source(x), target(x))
        raw = tiny(seed=2)
        lvvit.load_lvvit_checkpoint(raw, source.state_dict())  # an unwrapped state dict works too
        assert torch.equal(source(x), raw(x))


def test_checkpoint_filter_resamples_pos_embed_to_a_new_grid():
    source, bigger = tiny(), tiny(img_size=48)
    lvvit.load_lvvit_checkpoint(bigger, _reference_checkpoint(source))
    assert bigger.pos_embed.shape == (1, 145, 48)
    torch.testing.assert_close(bigger.cls_token, source.cls_token)
    assert bigger(images(size=48)).shape == (2, 10)


def test_mismatched_checkpoints_raise_naming_the_keys():
    model = tiny()
    state = dict(tiny(seed=1).state_dict())
    missing = dict(state)
    del missing["aux_head.bias"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): aux_head\.bias"):
        lvvit.load_lvvit_checkpoint(model, missing)
    extra = {**state, "dist_head.weight": torch.zeros(10, 48)}
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): dist_head\.weight"):
        lvvit.load_lvvit_checkpoint(model, extra)
    other_classes = tiny(num_classes=7).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatches \(4\): head\.weight \(checkpoint \(7, 48\) vs model "
                                         r"\(10, 48\)\), head\.bias .*aux_head\.bias"):
        lvvit.load_lvvit_checkpoint(model, other_classes)
    wider = tiny(embed_dim=96).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatches \(30\): cls_token \(checkpoint \(1, 1, 96\)"):
        lvvit.load_lvvit_checkpoint(model, wider)
    deeper = tiny(depth=3).state_dict()
    with pytest.raises(ValueError, match=r"unexpected keys \(\d+\): blocks\.2\."):
        lvvit.load_lvvit_checkpoint(model, {"model": deeper})
    assert torch.equal(model.aux_head.bias, tiny().aux_head.bias)  # nothing was loaded by the failures


def test_wrong_image_size_raises_a_helpful_error():
    model = tiny()
    with pytest.raises(ValueError, match=r"expects 32x32 images but got 48x48.*img_size="):
        model(images(size=48))


def test_invalid_construction_and_pretrained_raise(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"lvvit_s-26M-224-83.3.pth.tar.*pretrained_cfg_overlay=dict\(file="):
        timm.create_model("lvvit_small", pretrained=True, **TINY)
    with pytest.raises(ValueError, match="even patch_size"):
        timm.create_model("lvvit_small", **{**TINY, "patch_size": 5, "img_size": 35})
    with pytest.raises(ValueError, match="divisible by patch_size"):
        timm.create_model("lvvit_small", **{**TINY, "img_size": 30})
    with pytest.raises(ValueError, match="qkv_bias"):
        timm.create_model("lvvit_small", qkv_bias=True, **TINY)


def test_reset_classifier_replaces_both_heads():
    model = tiny()
    model.reset_classifier(5)
    assert model.head.out_features == 5 and model.aux_head.out_features == 5
    assert model(images()).shape == (2, 5)
    model.reset_classifier(0)
    assert isinstance(model.aux_head, torch.nn.Identity)
    assert model(images()).shape == (2, 48)  # features, as for any timm ViT without a head
