"""The sttabt_* models honour timm's model contract (the checks of timm's own tests/test_models.py, at
tiny sizes): forward, backward reaching every parameter, pretrained cfg names, reset_classifier,
forward_features / forward_head / forward_intermediates, features_only, grad checkpointing, layer
decay groups, pretrained weights from a local file, checkpoint_path=, local-dir: exports, compile.
Dense LV-ViT: TorchScript and FX. Nothing here touches the network (HF_HUB_OFFLINE=1)."""
import pytest
import timm
import torch
from timm.models import create_feature_extractor, save_for_hf
from timm.models._features_fx import get_graph_node_names

import sttabt
from sttabt.approx import ApproxNet
from sttabt.registry import HOSTS

from conftest import TINY

SMALL = {**TINY, "depth": 2, "img_size": 16}
MODELS = timm.list_models("sttabt_*")
BATCH = 3


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def x():
    return torch.randn(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def make(name, **kwargs):
    return timm.create_model(name, **{**SMALL, **kwargs})


def dense_host(name):
    return timm.create_model(HOSTS[name], **SMALL)


def test_every_host_family_is_registered():
    assert {"sttabt_deit_tiny", "sttabt_deit_small", "sttabt_deit_base", "sttabt_lvvit_small",
            "sttabt_lvvit_medium"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_forward_and_backward_reach_every_parameter(name, x):
    """Training (soft masks): every parameter the model holds gets a gradient, so DDP needs no
    find_unused_parameters (the scout keeps only what planning runs)."""
    model = make(name).train()
    out = model(x)
    assert out.shape == (BATCH, 10) and torch.isfinite(out).all()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert model.eval()(x).shape == (BATCH, 10)


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_cfg_is_registered_and_names_real_modules(name):
    tagged = [n for n in timm.list_pretrained(f"{name}.*")]
    assert len(tagged) == 1, tagged
    model = make(name)
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name and cfg["tag"] == tagged[0].split(".")[1]
    assert cfg.get("hf_hub_id") or cfg.get("url")
    classifiers = (cfg["classifier"],) if isinstance(cfg["classifier"], str) else cfg["classifier"]
    for module in (*classifiers, cfg["first_conv"]):
        assert module.startswith("host.")
        model.get_submodule(module)  # raises if there is no such module
    assert f"{cfg['first_conv']}.weight" in model.state_dict()
    assert cfg["classifier"] == model.pretrained_cfg["classifier"]


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier(name, x):
    model = make(name).eval()
    assert model.num_features == model.head_hidden_size == SMALL["embed_dim"]
    model.reset_classifier(5)
    assert model(x).shape == (BATCH, 5) and model.num_classes == 5
    heads = model.get_classifier()  # a distilled DeiT has two: (head, head_dist), as in timm
    assert all(h.out_features == 5 for h in (heads if isinstance(heads, tuple) else (heads,)))
    model.reset_classifier(0)
    assert model(x).shape == (BATCH, model.num_features)
    with pytest.raises(ValueError, match="class token"):
        model.reset_classifier(3, global_pool="avg")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("executor", ["masked", "pruned"])
def test_forward_head_of_forward_features_is_forward(name, executor, x):
    model = make(name).eval()
    with torch.no_grad():
        out = model.forward_detailed(x, executor=executor)
        assert (out.masks[-1] < 0.5).any(), "the plan drops tokens"
        features = model.forward_features(x, executor=executor)
        assert features.shape == (BATCH, model.num_tokens, SMALL["embed_dim"])
        torch.testing.assert_close(model.forward_head(features, token_mask=out.masks[-1]), out.logits)
        if not sttabt.executors.has_token_head(model.host):  # DeiT: the head reads the class token only
            torch.testing.assert_close(model.forward_head(features), model(x, executor=executor))
        cls = model.forward_head(features, pre_logits=True)
        assert cls.shape == (BATCH, model.num_features)


@pytest.mark.parametrize("name", ["sttabt_deit_tiny", "sttabt_lvvit_small"])
def test_dropped_tokens_keep_the_value_they_had_when_dropped(name, x):
    """Masked semantics in both executors: a token outside a layer's output set passes unchanged."""
    model = make(name, depth=3).eval()
    with torch.no_grad():
        masks, _ = model.plan(x)
        runs = {ex: model.forward_intermediates(x, indices=[0, 1, 2], output_fmt="NLC", return_prefix_tokens=True,
                                                executor=ex, intermediates_only=True) for ex in ("masked", "pruned")}
    states = {ex: [torch.cat((p, t), 1) for t, p in r] for ex, r in runs.items()}
    for a, b in zip(states["masked"], states["pruned"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    kept = masks > 0.5                              # (L + 1, B, T): kept[l + 1] = outputs of layer l
    dropped_after_0 = kept[1] & ~kept[2]            # computed by layer 0, not output by layer 1
    assert dropped_after_0.any()
    for ex in ("masked", "pruned"):
        s0, s1, s2 = states[ex]
        torch.testing.assert_close(s1[dropped_after_0], s0[dropped_after_0])
        torch.testing.assert_close(s2[dropped_after_0], s0[dropped_after_0])


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates_and_features_only(name, x):
    model = make(name).eval()
    grid = SMALL["img_size"] // SMALL["patch_size"]
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert final.shape == (BATCH, model.num_tokens, SMALL["embed_dim"])
        assert [m.shape for m in maps] == [(BATCH, SMALL["embed_dim"], grid, grid)] * 2
        only = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        assert len(only) == 1
        features = make(name, features_only=True, out_indices=(0, 1)).eval()
        features.model.load_state_dict(model.state_dict())
        got = features(x)
    assert features.feature_info.channels() == [SMALL["embed_dim"]] * 2
    assert features.feature_info.reduction() == [SMALL["patch_size"]] * 2
    for a, b in zip(got, maps):
        torch.testing.assert_close(a, b)


def test_grad_checkpointing_gives_the_same_gradients(x):
    plain, ckpt = make("sttabt_deit_tiny").train(), make("sttabt_deit_tiny").train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.set_grad_checkpointing(True)
    assert ckpt.host.grad_checkpointing
    for model in (plain, ckpt):
        torch.manual_seed(5)  # the same concrete noise
        model(x).sum().backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=n)


def test_layer_decay_groups_cover_every_parameter():
    from timm.optim import param_groups_layer_decay

    model = make("sttabt_deit_tiny")
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters()}
    def scale(param):
        return next(g["lr_scale"] for g in groups if any(p is param for p in g["params"]))

    assert scale(model.pruner.p_logits) == scale(model.host.head.weight) == 1.0
    assert scale(model.scout.net.blocks[0].attn.qkv.weight) == 1.0
    assert scale(model.host.patch_embed.proj.weight) < scale(model.host.blocks[1].attn.qkv.weight) < 1.0


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_from_a_local_dense_file(name, tmp_path, x):
    """pretrained=True with a local dense host file: host weights under host., scout interpolated."""
    host = dense_host(name)
    path = tmp_path / "dense.pth"
    torch.save(host.state_dict(), path)
    model = make(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
    for k, v in host.state_dict().items():
        torch.testing.assert_close(model.host.state_dict()[k], v, msg=k)
    expected = ApproxNet(host, factor=4)
    for k, v in expected.state_dict().items():
        torch.testing.assert_close(model.scout.state_dict()[k], v, msg=k)


def test_pretrained_with_other_classes_keeps_all_but_the_head(tmp_path):
    host = dense_host("sttabt_deit_tiny")
    path = tmp_path / "dense.pth"
    torch.save({"model": host.state_dict()}, path)  # the DeiT release layout
    model = make("sttabt_deit_tiny", num_classes=4, pretrained=True,
                 pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    torch.testing.assert_close(model.host.blocks[1].mlp.fc2.weight, host.blocks[1].mlp.fc2.weight)
    assert model.host.head.out_features == 4


def test_pretrained_offline_without_a_file_says_how_to_pass_one():
    with pytest.raises(ValueError, match=r"offline.*pretrained_cfg_overlay=dict\(file="):
        make("sttabt_deit_small", pretrained=True)


@pytest.mark.parametrize("name", ["sttabt_deit_tiny", "sttabt_lvvit_small"])
def test_checkpoint_path_takes_a_saved_model_or_a_dense_file(name, tmp_path, x):
    model = make(name, p_logit=-0.5).eval()
    with torch.no_grad():
        model.pruner.p_logits.add_(torch.linspace(-0.3, 0.3, model.depth))
    saved = sttabt.save_checkpoint(model, tmp_path / "model.pth")
    again = make(name, p_logit=-0.5, checkpoint_path=saved).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    host = dense_host(name)
    torch.save(host.state_dict(), tmp_path / "dense.pth")
    from_dense = make(name, checkpoint_path=str(tmp_path / "dense.pth"))
    torch.testing.assert_close(from_dense.host.pos_embed, host.pos_embed)
    torch.testing.assert_close(from_dense.scout.state_dict()["net.pos_embed"],
                               ApproxNet(host).state_dict()["net.pos_embed"])


def test_old_checkpoints_with_distillation_parts_in_the_scout_still_load(tmp_path, x):
    """Checkpoints written before the scout lost its distillation-only parts (last MLP, head,
    hidden_proj) load through sttabt.load_checkpoint, create_from_checkpoint and checkpoint_path=."""
    model = make("sttabt_deit_tiny").eval()
    state = dict(model.state_dict())
    width, last = model.scout.net.embed_dim, model.depth - 1
    for key, shape in {"scout.net.norm.weight": (width,), "scout.net.head.weight": (10, width),
                       f"scout.net.blocks.{last}.mlp.fc1.weight": (4 * width, width),
                       f"scout.net.blocks.{last}.attn.proj.bias": (width,),
                       "scout.hidden_proj.weight": (SMALL["embed_dim"], width)}.items():
        state[key] = torch.randn(shape)
    old = {"format": "sttabt", "version": 1, "architecture": "sttabt_deit_tiny",
           "create_kwargs": dict(model.create_kwargs), "state_dict": state}
    torch.save(old, tmp_path / "old.pth")
    with torch.no_grad():
        want = model(x)
        for loaded in (sttabt.load_checkpoint(make("sttabt_deit_tiny"), tmp_path / "old.pth"),
                       sttabt.create_from_checkpoint(tmp_path / "old.pth"),
                       make("sttabt_deit_tiny", checkpoint_path=str(tmp_path / "old.pth"))):
            torch.testing.assert_close(loaded.eval()(x), want)


@pytest.mark.parametrize("name", MODELS)
def test_local_dir_round_trip_through_save_for_hf(name, tmp_path, x):
    model = make(name, p_logit=0.5).eval()
    save_for_hf(model, tmp_path / "out", safe_serialization=True)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    again = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    assert type(again) is type(model) and again.pretrained_cfg["architecture"] == name
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
        torch.testing.assert_close(again(x, executor="masked"), model(x, executor="masked"))


def test_torch_compile_matches_eager(x):
    """One 1-block model, the pruned (deployment) path only: compiling is the slow part of this file.
    The eager backend checks that dynamo captures the model without a C++ toolchain."""
    model = make("sttabt_deit_tiny", depth=1).eval()
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


# --------------------------------------------------------------------------------------------------
# dense LV-ViT: TorchScript and FX, as timm's suite checks for every model
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lvvit_small", "lvvit_medium"])
def test_dense_lvvit_scripts_and_traces(name, x):
    model = timm.create_model(name, **SMALL).eval()
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), want)
        _, nodes = get_graph_node_names(model)
        traced = create_feature_extractor(model, return_nodes=[nodes[-1]])
        torch.testing.assert_close(next(iter(traced(x).values())), want)
