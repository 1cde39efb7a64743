"""Teacher loading, STTABT checkpoint round trips, and errors that list keys."""
import os

import pytest
import timm
import torch

import sttabt
from sttabt.checkpoint import save_checkpoint

from conftest import TINY, tiny


def test_timm_deit_teacher_loads_and_reinitialises_the_scout(tmp_path, images):
    teacher = timm.create_model("deit_small_patch16_224", **TINY).eval()
    path = tmp_path / "deit.pth"
    torch.save({"model": teacher.state_dict()}, path)  # the official DeiT checkpoint layout
    model = tiny()
    before = model.scout.net.pos_embed.clone()
    sttabt.load_teacher(model, path)
    with torch.no_grad():
        expected = teacher(images)
        assert (sttabt.wrap(model.host, pruner="abt", keep=1.0).eval()(images) - expected).abs().max() < 1e-5
    assert not torch.equal(before, model.scout.net.pos_embed), "the scout is re-initialised from the teacher"


def test_lvvit_reference_teacher_loads(tmp_path):
    teacher = timm.create_model("lvvit_small", **TINY)
    path = tmp_path / "lvvit.pth.tar"
    torch.save({"state_dict_ema": {f"module.{k}": v for k, v in teacher.state_dict().items()}}, path)
    model = tiny("sttabt_lvvit_small")
    sttabt.load_teacher(model, path)
    assert torch.equal(model.host.blocks[0].attn.qkv.weight, teacher.blocks[0].attn.qkv.weight)


def test_teacher_of_another_model_lists_the_problem(tmp_path):
    other = timm.create_model("deit_small_patch16_224", **{**TINY, "embed_dim": 96})
    path = tmp_path / "other.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(ValueError, match="shape mismatches"):
        sttabt.load_teacher(tiny(), path)
    state = timm.create_model("deit_small_patch16_224", **TINY).state_dict()
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys \(1\): head.bias.*unexpected keys \(1\): extra.weight"):
        sttabt.load_teacher(tiny(), path)
    with pytest.raises(ValueError, match="not found"):
        sttabt.load_teacher(tiny(), tmp_path / "nope.pth")


def test_sttabt_checkpoint_round_trip(tmp_path, images):
    model = tiny(p_logit=-0.5)
    with torch.no_grad():
        model.pruner.p_logits.add_(torch.tensor([0.3, -0.2, 0.1]))
        expected = model(images)
    path = save_checkpoint(model, tmp_path / "ckpt" / "model.pth", epoch=3)
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["model.pth"], "no temporary file is left behind"
    rebuilt = sttabt.create_from_checkpoint(path).eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(images), expected)
    fresh = tiny(p_logit=-0.5)
    sttabt.load_checkpoint(fresh, path)
    assert torch.equal(fresh.pruner.p_logits, model.pruner.p_logits)


def test_checkpoint_of_another_pruner_is_refused(tmp_path):
    path = save_checkpoint(tiny(pruner="concrete"), tmp_path / "concrete.pth")
    with pytest.raises(ValueError, match="unexpected keys.*pruner.p_logits"):
        sttabt.load_checkpoint(tiny(pruner="abt"), path)
    with pytest.raises(ValueError, match="full STTABT checkpoint"):
        sttabt.load_teacher(tiny(), path)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tiny(), tmp_path / "model.pth")
    good = torch.load(path, weights_only=True)["state_dict"]

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tiny(p_logit=2.0), path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.pth"]
    kept = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(kept[k], good[k]) for k in good)


# --------------------------------------------------------------------------------------------------
# damaged and foreign files: one clear error naming the file, wherever a checkpoint is read
# --------------------------------------------------------------------------------------------------
def damaged_files(tmp_path):
    """(name, path, what the message must say) for an empty, a truncated and a foreign file."""
    good = save_checkpoint(tiny(), tmp_path / "good.pth")
    data = open(good, "rb").read()
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.pth").write_text("hello, this is a text file\n")
    import numpy as np
    torch.save({"weights": np.zeros(3)}, tmp_path / "pickled.pth")
    return [("empty", tmp_path / "empty.pth", "is empty (0 bytes)"),
            ("truncated", tmp_path / "truncated.pth", "is truncated or damaged"),
            ("foreign", tmp_path / "notes.pth", "is not a PyTorch checkpoint"),
            ("pickled", tmp_path / "pickled.pth", "pickles Python objects other than tensors")]


def test_damaged_files_give_one_clear_error_everywhere(tmp_path):
    from sttabt.checkpoint import CheckpointError, read_checkpoint

    readers = [read_checkpoint, lambda p: sttabt.load_teacher(tiny(), p), sttabt.create_from_checkpoint,
               lambda p: sttabt.load_checkpoint(tiny(), p)]
    for name, path, expected in damaged_files(tmp_path):
        for read in readers:
            with pytest.raises(CheckpointError) as caught:
                read(path)
            message = str(caught.value)
            assert str(path) in message and expected in message, (name, message)
            assert "weights_only" not in message, "no advice the tools cannot follow"
            assert "\n" not in message


def test_wrong_kind_of_checkpoint_says_what_the_file_looks_like(tmp_path):
    from sttabt.checkpoint import CheckpointError

    dense = tmp_path / "dense.pth"
    torch.save({"model": timm.create_model("deit_small_patch16_224", **TINY).state_dict()}, dense)
    with pytest.raises(CheckpointError, match=r"dense.pth is not an STTABT checkpoint.*looks like a ViT/DeiT "
                                              r"state dict with 3 blocks, width 48"):
        sttabt.create_from_checkpoint(dense)
    full = save_checkpoint(tiny(), tmp_path / "full.pth")
    with pytest.raises(CheckpointError, match="full.pth is a full STTABT checkpoint, not a dense teacher"):
        sttabt.load_teacher(tiny(), full)
    deeper = tmp_path / "deeper.pth"
    torch.save(timm.create_model("deit_small_patch16_224", **{**TINY, "depth": 4}).state_dict(), deeper)
    with pytest.raises(CheckpointError, match=r"deeper.pth does not match.*looks like a ViT/DeiT state dict with "
                                              r"4 blocks.*unexpected keys \(\d+\): blocks.3"):
        sttabt.load_teacher(tiny(), deeper)
    optimizer = tmp_path / "optimizer.pth"
    torch.save(torch.optim.SGD(tiny().parameters(), lr=0.1).state_dict(), optimizer)
    with pytest.raises(CheckpointError, match="looks like an optimizer state"):
        sttabt.load_teacher(tiny(), optimizer)
