"""The sweep summary times each concrete model against the dense one on the same images."""
from __future__ import annotations

import json

from test_train import run_dir, train_imagenet, write_config


def test_summary_shows_measured_speedup_beside_accuracy_and_gflops(tmp_path, capsys):
    config = str(write_config(tmp_path, epochs=1, warmup_epochs=0))
    assert train_imagenet.main(["--config", config]) == 0
    table = capsys.readouterr().out
    assert "speedup" in table
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    dense, concrete = summary["rows"]
    assert dense["speedup"] == 1.0
    assert concrete["speedup"] > 0 and concrete["gflops"] < dense["gflops"]
    speed = summary["speed"]
    assert speed["batch_size"] > 0 and "CPU" in speed["device"] and speed["dense_images_per_s"] > 0
    assert f"{concrete['speedup']:.2f}x" in summary["table"]


def test_no_speed_leaves_the_column_empty(tmp_path):
    config = str(write_config(tmp_path, epochs=1, warmup_epochs=0))
    assert train_imagenet.main(["--config", config, "--no-speed"]) == 0
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    assert summary["speed"] is None and all(r.get("speedup") is None for r in summary["rows"])
