"""tools/plot.py: the sweep figure from run folders written the way the training tool writes them, the
GLUE figure from eval_glue / run_ltp outputs, and partial or missing inputs."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from ltp_nlp.results import LTP, MANUAL_TOPK, read_glue, read_run_folder
from sttabt.results import read_sweep
from sttabt.train.state import write_json
from sttabt.train.summary import write_summary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import plot  # noqa: E402

DENSE = {"top1": 45.75, "ema_top1": 45.25, "gflops": 0.01533}


def concrete(p_logit: float, top1: float, keep: float, gflops: float) -> dict:
    return {"stage": "concrete", "p_logit": p_logit, "target_keep": 0.5, "hard_top1": top1, "soft_top1": top1 - 0.2,
            "ema_hard_top1": top1 + 0.1, "keep_mean": keep, "keep_per_layer": [keep] * 4, "gflops": gflops,
            "dense_gflops": 0.01533, "scout_gflops": 0.00119}


ROWS = [concrete(-1.0, 40.0, 0.27, 0.00411), concrete(0.0, 43.0, 0.50, 0.00659), concrete(0.5, 43.45, 0.62, 0.00786)]


def write_run(root: Path, model: str = "sttabt_deit_tiny", *, finished: bool = True, **args) -> Path:
    """A run folder as tools/train_imagenet.py leaves it (through its own writers)."""
    folder = root / f"{model}-f4"
    folder.mkdir(parents=True)
    (folder / "args.yaml").write_text(yaml.safe_dump({"model": model, "factor": 4, "model_kwargs": {}, **args}))
    write_json(folder / "teacher" / "results.json", {"stage": "teacher", **DENSE})
    for row in ROWS:
        write_json(folder / "concrete" / f"p_logit_{row['p_logit']:g}" / "results.json", row)
    if finished:
        write_summary(folder, DENSE, ROWS, {"attention_kl": 0.02})
    return folder


def test_sweep_figure_from_a_finished_run(tmp_path, capsys):
    write_run(tmp_path / "run")
    out = tmp_path / "figs"
    assert plot.main([str(tmp_path / "run"), "--out", str(out)]) == 0
    for ext in ("png", "svg", "json"):
        assert (out / f"results_accuracy.{ext}").stat().st_size > 0
    assert (out / "results_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    numbers = json.loads((out / "results_accuracy.json").read_text())
    (sweep,) = numbers["sweeps"]
    assert sweep["dense"]["top1"] == 45.75 and sweep["dense"]["gflops"] == pytest.approx(0.01533)
    assert [(p["p_logit"], p["top1"], p["keep"], p["gflops"]) for p in sweep["points"]] == \
        [(r["p_logit"], r["hard_top1"], r["keep_mean"], r["gflops"]) for r in ROWS]
    assert numbers["published"] == []          # a tiny host is not DeiT-S: no published markers
    svg = (out / "results_accuracy.svg").read_text()
    assert "STTABT concrete (sttabt_deit_tiny, factor 4)" in svg and "dense sttabt_deit_tiny" in svg
    assert "wrote" in capsys.readouterr().out


def test_published_points_for_deit_small_only_at_its_own_shape(tmp_path):
    write_run(tmp_path / "a", "sttabt_deit_small")
    write_run(tmp_path / "b", "sttabt_deit_small", model_kwargs={"depth": 4})
    out = tmp_path / "figs"
    assert plot.main([str(tmp_path / "a"), "--out", str(out)]) == 0
    published = json.loads((out / "results_accuracy.json").read_text())["published"]
    assert {"method": "DeiT-S (dense)", "top1": 79.8, "gflops": 4.6, "kept": 1.0} in published
    assert {"method": "EViT", "top1": 79.5, "gflops": 3.0, "kept": None} in published
    assert "STTABT (paper)" in (out / "results_accuracy.svg").read_text()
    assert read_sweep(tmp_path / "b" / "sttabt_deit_small-f4").reference_host is None


def test_partial_and_missing_runs_are_named_and_the_rest_is_drawn(tmp_path, capsys):
    folder = write_run(tmp_path / "partial", finished=False)
    (folder / "concrete" / "p_logit_0.5" / "results.json").unlink()
    (folder / "concrete" / "p_logit_0.5" / "checkpoint.pth").write_bytes(b"")
    write_run(tmp_path / "done")
    out = tmp_path / "figs"
    runs = [str(tmp_path / "partial"), str(tmp_path / "done"), str(tmp_path / "nowhere")]
    assert plot.main([*runs, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "p_logit_0.5/results.json (stage unfinished)" in err and "summary.json (run unfinished)" in err
    assert f"run folder not found: {tmp_path / 'nowhere'}" in err
    sweeps = json.loads((out / "results_accuracy.json").read_text())["sweeps"]
    assert [len(s["points"]) for s in sweeps] == [2, 3]
    assert plot.main([*runs, "--out", str(out), "--strict"]) == 1
    capsys.readouterr()
    assert plot.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "none")]) == 2
    assert "nothing to plot" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    (tmp_path / "empty").mkdir()
    assert plot.main([str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "holds no training run" in capsys.readouterr().err


def eval_file(path: Path, task: str, rows: list[dict], **common) -> Path:
    """The JSON of tools/eval_glue.py --output (a sweep)."""
    path.write_text(json.dumps({"checkpoint": "C", "task": task, "examples": 8, "host_type": "bert", **common,
                                "rows": rows}))
    return path


def row(mode: str, metric: float, kept: float, flops: float, name: str = "accuracy", **extra) -> dict:
    return {"prune_mode": mode, name: metric, "kept_mean": kept, "relative_flops": flops, "learned": False, **extra}


def run_folder(path: Path, task: str, mode: str, evals: list[tuple[float, float, float]]) -> Path:
    """A run_ltp.py output folder: config, final eval_results.json, trainer_state.json of its checkpoints."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "ltp", "prune_mode": mode, "finetuning_task": task}))
    keys = lambda a, k, f: {"eval_accuracy": a, "eval_kept_mean": k, "eval_relative_flops": f}  # noqa: E731
    (path / "eval_results.json").write_text(json.dumps(keys(*evals[-1])))
    (path / "checkpoint-20").mkdir()
    history = [{"loss": 0.3, "step": 10}] + [{**keys(*e), "step": 10 * (i + 1)} for i, e in enumerate(evals)]
    (path / "checkpoint-20" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return path


def test_glue_figure(tmp_path):
    inputs = [
        eval_file(tmp_path / "topk.json", "SST2", [row("topk", 0.86, 0.6, 0.75), row("topk", 0.87, 0.8, 0.86)]),
        eval_file(tmp_path / "abt.json", "SST2", [row("sttabt_abt", 0.82, 0.3, 0.5)]),
        eval_file(tmp_path / "dense.json", "SST2", [row("none", 0.8784, 1.0, 1.0)]),
        eval_file(tmp_path / "cola.json", "CoLA", [row("absolute_threshold", 0.41, 0.5, 0.55, "matthews_correlation")]),
        eval_file(tmp_path / "named.json", "SST2", [row("sttabt_concrete", 0.85, 0.47, 0.47)], method="my label"),
        run_folder(tmp_path / "ltp", "sst2", "absolute_threshold", [(0.85, 0.5, 0.49), (0.8635, 0.49, 0.486),
                                                                     (0.861, 0.48, 0.48)]),
    ]
    out = tmp_path / "figs"
    assert plot.main(["--glue", *map(str, inputs), "--out", str(out), "--name", "text"]) == 0
    points = json.loads((out / "text_glue.json").read_text())["points"]
    by_method = {(p["task"], p["method"]): p for p in points}
    assert by_method[("SST2", LTP)]["metric"] == 0.8635           # the best of the run's evaluations
    assert by_method[("SST2", LTP)]["relative_flops"] == 0.486
    assert by_method[("CoLA", "manual threshold")]["metric_name"] == "matthews_correlation"
    assert ("SST2", "ABT, approximated attention") in by_method and ("SST2", "my label") in by_method
    assert sum(p["method"] == MANUAL_TOPK for p in points) == 2
    svg = (out / "text_glue.svg").read_text()
    for text in ("SST2", "CoLA", "LTP", "manual top-k", "dense", "my label"):
        assert text in svg, text


def test_glue_inputs_errors(tmp_path):
    folder = tmp_path / "unfinished"
    folder.mkdir()
    points, problems = read_glue([str(folder), str(tmp_path / "missing.json"), str(eval_file(
        tmp_path / "old.json", "SST2", [{"prune_mode": "topk", "accuracy": 0.5}]))])
    assert points == []
    assert "no eval_results.json" in problems[0] and "not found" in problems[1] and "'kept_mean'" in problems[2]
    broken = tmp_path / "broken.json"
    broken.write_text('{"task": "SST2", "rows": [')                 # a write cut short
    points, problems = read_glue([str(broken)])
    assert points == [] and "unreadable, not valid JSON" in problems[0] and "not found" not in problems[0]
    plain = run_folder(tmp_path / "plain", "SST2", "none", [(0.88, 1.0, 1.0)])
    (plain / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (plain / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.88, "eval_loss": 0.3}))  # run_glue.py's
    shutil.rmtree(plain / "checkpoint-20")
    with pytest.raises(ValueError, match="TASK=FOLDER"):
        read_run_folder(plain)
    (point,) = read_glue([f"SST2={plain}"])[0]
    assert point.method == "dense" and point.metric == 0.88
    odd = plain.rename(tmp_path / "lr=1e-5")           # an "=" in the path is not a task prefix
    (point,) = read_glue([f"SST2={odd}"])[0]
    assert point.task == "SST2" and point.source == str(odd)


def test_learned_pruner_values_name_the_method():
    import torch
    from torch import nn

    from ltp_nlp.results import learned, method_name

    model = nn.Module()
    model.pruner = nn.Module()
    model.pruner.threshold_delta = nn.Parameter(torch.zeros(4))
    assert not learned(model) and method_name("absolute_threshold", trained=False) == "manual threshold"
    model.pruner.threshold_delta.data[2] = 1e-4
    assert learned(model) and method_name("absolute_threshold", trained=True) == LTP
    del model.pruner.threshold_delta
    model.pruner.p_logits = nn.Parameter(torch.full((4,), -1.0))
    assert not learned(model)
    model.pruner.p_logits.data[0] = -0.9
    assert learned(model)
    with pytest.raises(ValueError, match="no GLUE-figure method"):
        method_name("mystery", trained=False)


@pytest.mark.parametrize("target, content, message", [
    ("summary.json", '{"run": "x", "rows": [{"method": "dense", "hard_top1": 4', "not valid JSON"),
    ("summary.json", "", "empty"),
    ("summary.json", "[1, 2]", "a JSON list, not the object"),
    ("summary.json", '{"accuracy": 0.9}', "no list of rows"),
    ("summary.json", '{"rows": [{"method": "dense", "hard_top1": "high", "gflops": 1.0}]}',
     "row 0 \\(dense\\) has hard_top1 is 'high', not a number"),
    ("summary.json", '{"rows": [{"method": "sttabt_concrete", "hard_top1": 40.0}]}', "no p_logit, keep_mean, gflops"),
    ("summary.json", '{"rows": [{"method": "dynamicvit"}]}', "method 'dynamicvit'"),
    ("concrete/p_logit_0/results.json", '{"stage": "concrete", "hard_top1": 40', "not valid JSON"),
    ("concrete/p_logit_0/results.json", '{"top1": 40.0}', "the stage's results has no p_logit"),
    ("teacher/results.json", '{"accuracy": 40.0}', "the teacher's results has no top1, gflops"),
    ("args.yaml", "model: [unclosed", "not valid YAML"),
    ("args.yaml", "- a list", "not the mapping"),
])
def test_truncated_or_foreign_results_files_exit_2_naming_the_file(tmp_path, capsys, target, content, message):
    """A results file that is there but broken is an error (exit 2), never a partial or empty series."""
    folder = write_run(tmp_path / "run", finished=target == "summary.json")
    (folder / target).write_text(content)
    out = tmp_path / "figs"
    assert plot.main([str(tmp_path / "run"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: {folder / target}: " in err and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert "rerun that stage" in err and not out.exists()
