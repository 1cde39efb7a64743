"""The GLUE study's plan: equal training budgets, inputs made before they are read, rows in the schema."""
import json

import pytest

from ltp_nlp.study import METHODS, StudySettings, budget_summary, merge_rows, plan, rows_of

EPOCH_FLAGS = ("--epoch", "--epochs", "--num_train_epochs")
INPUT_FLAGS = ("--restore", "--checkpoint", "--model_name_or_path")
OUTPUT_FLAGS = ("--output_dir",)


def settings(tmp_path, **kw):
    base = dict(task="MRPC", model="host", data_dir="glue", out=str(tmp_path / "MRPC"), train_samples=1000,
                dense_epochs=2.0, budget_epochs=1.5, ltp_soft_epochs=0.5, scout_epochs=0.25)
    return StudySettings(**{**base, **kw})


def flag(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


def examples(step, s):
    for name in EPOCH_FLAGS:
        if name in step.argv:
            return round(float(flag(step.argv, name)) * s.train_samples)
    return 0


def test_every_trained_method_gets_the_same_budget(tmp_path):
    s = settings(tmp_path)
    steps = {step.name: step for step in plan(s)}
    by_eval = [step for step in steps.values() if step.method]
    assert {step.method for step in by_eval} == set(METHODS)
    for step in by_eval:
        seen = sum(examples(steps[name], s) for name in step.after if name != "dense fine-tune")
        assert seen == step.train_examples, step.name
        if step.method in ("dense_control", "ltp", "sttabt_concrete"):
            assert seen == s.budget == 1500
    assert examples(steps["dense fine-tune"], s) == 2000
    summary = budget_summary(s)
    assert summary["ltp"] == {"soft": 500, "hard": 1000}
    assert summary["sttabt_concrete"] == {"scout_distillation": 250, "concrete": 1250}
    # every training step draws from the same first N examples, with the same seed
    for step in steps.values():
        if step.argv[0] != "tools/eval_glue.py" and "--max_train_samples" in step.argv:
            assert flag(step.argv, "--max_train_samples") == "1000" and flag(step.argv, "--seed") == "0"


def test_inputs_are_made_before_they_are_read_and_outputs_are_unique(tmp_path):
    s = settings(tmp_path, ltp_thresholds=(0.01, 0.02), p_logits=(-1.0, 0.0))
    made, outputs = {s.model}, []
    for step in plan(s):
        argv = list(step.argv)
        if argv[0] == "tools/convert_to_ltp.py":
            assert argv[1] in made
        for name in INPUT_FLAGS:
            if name in argv:
                assert flag(argv, name) in made, (step.name, flag(argv, name))
        for name in OUTPUT_FLAGS + ("--output",):
            if name in argv:
                outputs.append(flag(argv, name))
                made.add(flag(argv, name))
        assert step.done.startswith(s.out)
    assert len(outputs) == len(set(outputs))
    assert sum(step.method == "ltp" for step in plan(s)) == 2 and sum(step.method == "sttabt_concrete"
                                                                       for step in plan(s)) == 2


@pytest.mark.parametrize("kw, message", [
    (dict(ltp_soft_epochs=1.5), "ltp_soft_epochs must lie strictly between 0 and --budget-epochs"),
    (dict(scout_epochs=0), "scout_epochs must lie strictly between 0"),
    (dict(budget_epochs=0, ltp_soft_epochs=0.1), "budget_epochs must be > 0"),
    (dict(train_samples=0), "train_samples must be >= 1"),
    (dict(p_logits=()), "at least one LTP threshold and one p-logit"),
])
def test_bad_settings_say_what_to_do(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        settings(tmp_path, **kw)


def test_rows_of_a_sweep_and_merging(tmp_path):
    s = settings(tmp_path)
    steps = plan(s)
    abt = next(step for step in steps if step.method == "abt")
    path = tmp_path / "abt.json"
    row = dict(prune_mode="sttabt_abt", combined_score=0.8, relative_flops=0.5, kept_mean=0.55,
               kept_per_layer=[1.0, 0.5], max_abs_diff_pruned_masked=1e-6)
    path.write_text(json.dumps({"task": "MRPC", "rows": [{**row, "token_keep_rate": 0.3},
                                                          {**row, "token_keep_rate": 0.5, "relative_flops": 0.7}]}))
    abt = type(abt)(abt.name, abt.argv, str(path), abt.method, abt.train_examples, abt.after, (("p_logit", -1.0),))
    rows = rows_of(abt, steps, "MRPC")
    assert [r["relative_flops"] for r in rows] == [0.5, 0.7]
    assert {"task", "method", "train_examples", "metric", "relative_flops", "command"} <= set(rows[0])
    assert rows[0]["method"] == "abt" and rows[0]["train_examples"] == 250
    assert rows[0]["setting"] == {"prune_mode": "sttabt_abt", "token_keep_rate": 0.3, "p_logit": -1.0}
    concrete = [step for step in steps if step.method == "sttabt_concrete"]
    assert [dict(step.setting) for step in concrete] == [{"p_logit": v} for v in s.p_logits]
    chain = rows[0]["command"]  # how the scout was made, then how it was scored
    assert chain.index("tools/distill_scout_glue.py") < chain.index("tools/eval_glue.py") and " && " in chain
    old = [{"task": "MRPC", "method": "dense"}, {"task": "SST2", "method": "dense"}]
    merged = merge_rows(old, rows, "mrpc")
    assert [r["task"] for r in merged] == ["SST2", "MRPC", "MRPC"]
    path.write_text(json.dumps({"task": "MRPC", "accuracy": 0.8}))
    with pytest.raises(ValueError, match="no 'combined_score'"):
        rows_of(abt, steps, "MRPC")


def test_plot_draws_one_figure_per_task(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import plot

    rows = [dict(task=t, method=m, train_examples=n, metric=0.8 + 0.01 * i, metric_name="accuracy",
                 relative_flops=f, command="c")
            for t in ("SST2", "MRPC") for i, (m, n, f) in enumerate([("dense", 0, 1.0), ("dense_control", 100, 1.0),
                                                                       ("ltp", 100, 0.4), ("ltp", 100, 0.6),
                                                                       ("abt", 20, 0.5)])]
    study = tmp_path / "text_study.json"
    study.write_text(json.dumps({"model": "m (x)", "rows": rows}))
    assert plot.main(["--study", str(study), "--out", str(tmp_path / "fig"), "--name", "text"]) == 0
    for task in ("sst2", "mrpc"):
        svg = (tmp_path / "fig" / f"text_{task}.svg").read_text()
        assert "LTP (soft, then hard), 100 examples" in svg and "dense control (trained as long)" in svg
        table = (tmp_path / "fig" / f"text_{task}.md").read_text().splitlines()
        assert len(table) == 2 + 5 and table[2].startswith("| dense |")
        ltp = [line for line in table if line.startswith("| LTP |")]
        assert [line.split(" | ")[6] for line in ltp] == ["0.400", "0.600"]      # sorted by FLOPs
        assert ltp[0].split(" | ")[4:6] == ["+2.00", "+1.00"]                  # vs dense 80, control 81
    (tmp_path / "bad.json").write_text("{}")
    assert plot.main(["--study", str(tmp_path / "bad.json"), "--out", str(tmp_path / "fig")]) == 2
