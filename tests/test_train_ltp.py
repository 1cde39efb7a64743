"""tools/train_imagenet.py --pruner ltp: teacher, then per threshold LTP's soft and hard stages, on a
tiny host and 16 px digits (seconds). No scout is trained."""
from __future__ import annotations

import json

import pytest
import torch

from test_train import RUN, expect_error, run_dir, train_imagenet, write_config  # noqa: F401  (one_thread)
from test_train import one_thread  # noqa: F401

import sttabt
from sttabt.pruners import LTPPruner
from sttabt.train import parse_args


def test_ltp_flags_parse_and_refuse(tmp_path, capsys):
    args = parse_args(["--pruner", "ltp", "--thresholds", "0.01, 0.02", "--dataset", "digits"])
    assert args.pruner == "ltp" and args.thresholds == [0.01, 0.02] and args.hard_epochs == 5
    for flags, message in ((["--thresholds", "x"], "--thresholds must be numbers"),
                           (["--thresholds", "-0.1"], "--thresholds must be >= 0"),
                           (["--ltp-temperature", "0"], "--ltp-temperature must be > 0")):
        with pytest.raises(ValueError, match=message):
            parse_args(["--pruner", "ltp", "--dataset", "digits", *flags])


def test_ltp_pipeline_trains_soft_then_hard(tmp_path, capsys):
    # depth 3: layer 0 keeps everything (LTP skips it), layer 1 prunes, the last outputs CLS only
    kwargs = {"depth": 3, "embed_dim": 32, "num_heads": 2, "patch_size": 4}
    config = str(write_config(tmp_path, model_kwargs=kwargs, pruner="ltp", thresholds="0.3", epochs=1, warmup_epochs=0, hard_epochs=1,
                              hard_lr=1e-4, ltp_temperature=0.01))
    assert train_imagenet.main(["--config", config]) == 0
    out = capsys.readouterr().out
    assert "t=0.3" in out and "GFLOPs" in out
    run = run_dir(tmp_path)
    assert not (run / "approx").exists(), "LTP reads the host's attention: no scout stage"
    dense, ltp = json.loads((run / "summary.json").read_text())["rows"]
    assert ltp["method"] == "ltp" and ltp["threshold"] == 0.3 and ltp["p_logit"] is None
    assert ltp["gflops"] < dense["gflops"] and 0 < ltp["keep_mean"] < 1
    assert "threshold" in (run / "summary.csv").read_text().splitlines()[0]
    soft = torch.load(run / "ltp" / "threshold_0.3" / "soft" / "model.pth", weights_only=False)["state_dict"]
    hard = torch.load(run / "ltp" / "threshold_0.3" / "hard" / "model.pth", weights_only=False)["state_dict"]
    assert not torch.equal(soft["pruner.threshold_delta"], torch.zeros(3)), "the soft stage learns the thresholds"
    assert torch.equal(soft["pruner.threshold_delta"], hard["pruner.threshold_delta"]), "frozen in the hard stage"
    assert not torch.equal(soft["host.head.weight"], hard["host.head.weight"]), "the hard stage trains the host"
    model = sttabt.create_from_checkpoint(run / "ltp" / "threshold_0.3" / "hard" / "model.pth").eval()
    assert isinstance(model.pruner, LTPPruner) and model.scout is None
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert train_imagenet.main(["--config", config, "--auto-resume"]) == 0
    assert "finished earlier" in capsys.readouterr().out
