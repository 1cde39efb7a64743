"""Scout distillation on text and the GLUE evaluation / benchmark tools, on a tiny random BERT.

A tiny BERT classifier (hidden 32, 2 layers) with an offline word-piece tokenizer and a few SST-2 rows
in the GLUE layout are written to a temporary folder; the tools run in-process through ``main(argv)``.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

import ltp_nlp  # noqa: F401  (registers the Auto classes)
from ltp_nlp import LTPConfig, LTPForSequenceClassification
from ltp_nlp.distill import is_bare_encoder, load_checkpoint, load_fresh_head, reconfigure, replace_folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import benchmark_glue  # noqa: E402
import distill_scout_glue  # noqa: E402
import eval_glue  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("a the this that film movie story plot actor cast scene music is was very quite not so too rather "
         "good great fine fun moving bad dull boring awful slow and but with of it").split()
TINY = dict(vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=48, max_position_embeddings=40, initializer_range=0.3, num_labels=2)
FLOPS_KEYS = ("baseline_gflops", "gflops", "relative_flops", "scout_gflops", "kept_per_layer")


def sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 14))) for _ in range(count)]


def write_sst2(folder: Path) -> Path:
    glue = folder / "glue"
    (glue / "SST-2").mkdir(parents=True)
    for split, count, seed in (("train", 48, 0), ("dev", 24, 1)):
        rows = ["sentence\tlabel"] + [f"{s}\t{i % 2}" for i, s in enumerate(sentences(count, seed))]
        (glue / "SST-2" / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return glue


def write_tokenizer(folder: Path) -> None:
    from transformers import BertTokenizerFast

    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(SPECIALS + WORDS) + "\n", encoding="utf-8")
    BertTokenizerFast.from_pretrained(str(folder), local_files_only=True).save_pretrained(folder)


def write_host(folder: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    host = folder / "host"
    write_tokenizer(host)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(**TINY, hidden_dropout_prob=0.0,
                                             attention_probs_dropout_prob=0.0)).save_pretrained(host)
    return host


def write_bare_encoder(folder: Path, *, pooler: bool = True) -> Path:
    """A pretrained encoder without a classifier head, as ``BertModel.save_pretrained`` writes it (no
    ``bert.`` prefix, like sentence-transformers' MiniLM), with its tokenizer."""
    from transformers import BertConfig, BertModel

    write_tokenizer(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(**TINY), add_pooling_layer=pooler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    return write_host(root), write_sst2(root), root


@pytest.fixture(scope="module")
def distilled(setup):
    host, glue, root = setup
    out = root / "approx"
    assert distill_scout_glue.main(["--restore", str(host), "--task", "SST2", "--data_dir", str(glue), "--factor", "2",
                                    "--epochs", "3", "--lr", "1e-2", "--bs", "8", "--max_length", "32",
                                    "--output_dir", str(out), "--no_progress"]) == 0
    return out


def _json(capsys, main, argv) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_distillation_lowers_attention_kl_and_saves_an_abt_checkpoint(distilled):
    results = json.loads((distilled / "distill_results.json").read_text())
    kl = results["attention_kl"]
    assert kl["distilled"] < 0.85 * kl["interpolated_init"], kl  # factor 2: 0.94 -> 0.66 when written
    assert results["steps"] == 18 and results["dev_examples"] == 24
    assert len(results["history"]) == 3
    assert not distilled.with_name("approx.partial").exists()
    assert any((distilled / "tb").iterdir())
    config = json.loads((distilled / "config.json").read_text())
    assert config["prune_mode"] == "sttabt_abt" and config["approx_factor"] == 2 and config["model_type"] == "ltp"

    abt = LTPForSequenceClassification.from_pretrained(distilled)   # no init_scout: the scout is saved
    concrete = LTPForSequenceClassification.from_pretrained(distilled, prune_mode="sttabt_concrete", p_logit=-0.5)
    assert concrete.config.prune_mode == "sttabt_concrete"
    for key, value in abt.state_dict().items():
        if ".scout." in key:
            assert torch.equal(concrete.state_dict()[key], value), key
    assert torch.all(concrete.ltp.pruner.p_logits == -0.5)


def test_eval_glue_abt_on_the_distilled_scout(capsys, distilled, setup):
    _, glue, _ = setup
    out = _json(capsys, eval_glue.main, ["--checkpoint", str(distilled), "--task", "SST2", "--data_dir", str(glue),
                                         "--prune_mode", "sttabt_abt", "--token_keep_rate", "0.3",
                                         "--batch_size", "8", "--json"])
    assert set(FLOPS_KEYS) <= set(out) and "accuracy" in out
    assert out["examples"] == 24 and len(out["kept_per_layer"]) == 2
    assert 0 < out["relative_flops"] < 1 and out["scout_gflops"] > 0
    assert out["gflops"] == pytest.approx(out["relative_flops"] * out["baseline_gflops"])
    assert out["max_abs_diff_pruned_masked"] < 1e-4 and out["checked_batches"] == 2


def test_eval_glue_sweeps(capsys, distilled, setup):
    host, glue, _ = setup
    data = ["--task", "SST2", "--data_dir", str(glue), "--json"]
    out = _json(capsys, eval_glue.main, ["--checkpoint", str(distilled), *data, "--keep-rates", "0.3", "1.0"])
    low, full = out["rows"]
    assert (low["token_keep_rate"], full["token_keep_rate"]) == (0.3, 1.0)
    assert low["relative_flops"] < full["relative_flops"] and full["kept_mean"] == 1
    # LTP's manual-threshold baseline straight from the fine-tuned host folder
    out = _json(capsys, eval_glue.main, ["--checkpoint", str(host), *data, "--prune_mode", "absolute_threshold",
                                         "--scoring_mode", "mean_norm", "--thresholds", "0", "0.5"])
    none, some = out["rows"]
    assert none["relative_flops"] == pytest.approx(1) and some["relative_flops"] < 1
    assert some["max_abs_diff_pruned_masked"] < 1e-4 and some["scout_gflops"] == 0
    assert eval_glue.main(["--checkpoint", str(host), *data, "--prune_mode", "sttabt_abt"]) == 2
    assert "no approximation network" in capsys.readouterr().err
    assert eval_glue.main(["--checkpoint", str(host), *data, "--keep-rates", "0.5"]) == 2
    assert "sweeping token_keep_rate needs" in capsys.readouterr().err


def test_benchmark_glue_reports_side_by_side(capsys, distilled, setup):
    _, glue, _ = setup
    out = _json(capsys, benchmark_glue.main, ["--checkpoint", str(distilled), "--task", "SST2", "--data_dir", str(glue),
                                              "--token_keep_rate", "0.3", "--batch-size", "8", "--repeats", "1",
                                              "--threads", "1", "--json"])
    for key in ("dense_ex_s", "pruned_ex_s", "speedup", "ideal_speedup", "share_of_ideal"):
        assert out[key] > 0, key
    assert out["speedup"] == pytest.approx(out["pruned_ex_s"] / out["dense_ex_s"])
    assert out["ideal_speedup"] == pytest.approx(1 / out["relative_flops"])
    assert 0 <= out["dense_accuracy"] <= 1 and 0 <= out["pruned_accuracy"] <= 1
    assert out["batches"] == "length-sorted" and len(out["dense_ms"]) == len(out["pruned_ms"]) == 1
    assert out["head"] == "checkpoint"
    for key in ("scout_s", "plan_s", "host_s", "dense_s"):  # an STTABT mode under --json: where the time goes
        assert out[key] > 0, key
    online = _json(capsys, benchmark_glue.main, ["--checkpoint", str(distilled), "--task", "SST2", "--data_dir",
                                                 str(glue), "--prune_mode", "topk", "--token_keep_rate", "0.3",
                                                 "--repeats", "1", "--json"])
    assert online["pruned_ex_s"] > 0 and "scout_s" not in online  # an online pruner has no separate stages


@pytest.mark.parametrize("mode", ["sttabt_abt", "sttabt_concrete", "sttabt_abt_oracle"])
def test_benchmark_stages_chain_into_the_pruned_forward(distilled, mode):
    """The timed stages compute what the pruned model computes: the same plan, the same logits."""
    model = LTPForSequenceClassification.from_pretrained(distilled, prune_mode=mode, token_keep_rate=0.3,
                                                         p_logit=-1.0).eval()
    torch.manual_seed(0)
    ids = torch.randint(5, TINY["vocab_size"], (4, 12))
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[3, 4:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.inference_mode():
        expected = model(ids, mask, batch["token_type_ids"], masking_mode="hard", executor="pruned")
        stages = benchmark_glue.stage_calls(model)
        total = dict.fromkeys(stages, 0.0)
        logits = benchmark_glue.run_stages(stages, batch, total)
        plan = stages["plan"](batch, stages["scout"](batch, None))
    assert torch.equal(plan, expected.plan) and all(t > 0 for t in total.values())
    torch.testing.assert_close(logits, expected.logits, atol=1e-6, rtol=0)


def test_benchmark_glue_times_a_bare_encoder_with_a_fresh_head(capsys, setup, tmp_path):
    """A bare pretrained encoder gets a new, seeded head (scores are chance, speeds real), with a note."""
    _, glue, _ = setup
    bare = write_bare_encoder(tmp_path / "bare")
    capsys.readouterr()
    assert benchmark_glue.main(["--checkpoint", str(bare), "--task", "SST2", "--data_dir", str(glue),
                                "--prune_mode", "sttabt_abt", "--token_keep_rate", "0.5", "--init_scout", "interpolate",
                                "--batch-size", "8", "--max-examples", "16", "--repeats", "1", "--threads", "1",
                                "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["head"] == "fresh" and out["prune_mode"] == "sttabt_abt" and out["token_keep_rate"] == 0.5
    assert out["examples"] == 16 and out["pruned_ex_s"] > 0 and 0 < out["relative_flops"] < 1
    assert "bare pretrained encoder" in captured.err and "scores are chance" in captured.err


def test_fresh_head_is_seeded_and_the_rest_is_loaded_strictly(tmp_path):
    from transformers import BertModel

    bare = write_bare_encoder(tmp_path / "bare")
    assert is_bare_encoder(bare) and not is_bare_encoder(write_host(tmp_path))
    state = torch.random.get_rng_state()
    first, again, other = (load_fresh_head(bare, "MNLI", seed=seed) for seed in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)          # the global random state is left alone
    assert first.classifier.weight.shape == (3, TINY["hidden_size"]) and first.config.prune_mode == "none"
    assert first.config.id2label == {0: "contradiction", 1: "entailment", 2: "neutral"} and not first.training
    assert torch.equal(first.classifier.weight, again.classifier.weight)
    assert not torch.equal(first.classifier.weight, other.classifier.weight)
    encoder = BertModel.from_pretrained(bare).state_dict()
    for key, value in first.ltp.state_dict().items():
        if ".pruner." not in key and ".scout." not in key:
            assert torch.equal(value, encoder[key]), key
    no_pooler = write_bare_encoder(tmp_path / "no_pooler", pooler=False)   # a missing weight besides the head
    with pytest.raises(ValueError, match="only lacks its classifier head:\n  missing keys: bert.pooler.dense.bias"):
        load_fresh_head(no_pooler, "SST2")
    from transformers import BertConfig, BertForMaskedLM

    masked_lm = tmp_path / "masked_lm"                                    # an unexpected weight: cls.predictions
    BertForMaskedLM(BertConfig(**TINY)).save_pretrained(masked_lm)
    with pytest.raises(ValueError, match="unexpected keys: cls.predictions"):
        load_fresh_head(masked_lm, "SST2")


def test_eval_glue_refuses_a_bare_encoder_saying_what_to_do(capsys, setup, tmp_path):
    _, glue, _ = setup
    bare = write_bare_encoder(tmp_path / "bare")
    capsys.readouterr()
    assert eval_glue.main(["--checkpoint", str(bare), "--task", "SST2", "--data_dir", str(glue), "--json"]) == 2
    err = capsys.readouterr().err
    assert f"{bare} is a pretrained bert encoder without a classifier head" in err
    assert "fine-tune it on the task first (tools/run_glue.py" in err and "tools/benchmark_glue.py" in err
    with pytest.raises(ValueError, match="without a classifier head"):
        load_checkpoint(bare)


def test_reconfigure_keeps_learned_state_and_rederives_thresholds():
    torch.manual_seed(0)
    model = LTPForSequenceClassification(LTPConfig(host_type="bert", prune_mode="absolute_threshold",
                                                   final_token_threshold=0.01, **TINY)).eval()
    with torch.no_grad():
        model.ltp.pruner.threshold_delta.fill_(0.003)
    moved = reconfigure(model, final_token_threshold=0.04)
    torch.testing.assert_close(moved.ltp.pruner.threshold_base, torch.tensor([0.0, 0.02]))
    torch.testing.assert_close(moved.ltp.pruner.threshold_delta, torch.full((2,), 0.003))
    topk = reconfigure(model, prune_mode="topk", token_keep_rate=0.5)   # the thresholds' weights are dropped
    assert topk.config.prune_mode == "topk" and not any(".pruner." in k for k in topk.state_dict())
    for key, value in model.state_dict().items():
        if ".pruner." not in key:
            assert torch.equal(topk.state_dict()[key], value), key
    assert reconfigure(model, prune_mode="absolute_threshold") is model
    with pytest.raises(ValueError, match="init_scout='interpolate'"):
        reconfigure(model, prune_mode="sttabt_abt")
    with pytest.raises(ValueError, match="cannot change host_type"):
        reconfigure(model, host_type="roberta")


def test_load_checkpoint_reads_host_folders_and_replace_folder_is_atomic(setup, tmp_path):
    host, _, _ = setup
    model = load_checkpoint(host)
    assert model.config.host_type == "bert" and model.config.prune_mode == "none" and not model.training
    old, new = tmp_path / "out", tmp_path / "out.partial"
    old.mkdir(), new.mkdir()
    (old / "stale").write_text("x")
    (new / "fresh").write_text("y")
    replace_folder(new, old)
    assert (old / "fresh").exists() and not (old / "stale").exists() and not new.exists()
    assert not (tmp_path / "out.old").exists()


@pytest.mark.parametrize("host_type", ["bert", "roberta", "ibert"])
def test_dense_host_of_the_benchmark_is_the_same_classifier(host_type):
    torch.manual_seed(0)
    model = LTPForSequenceClassification(LTPConfig(host_type=host_type, prune_mode="topk", token_keep_rate=0.5,
                                                   **TINY)).eval()
    dense = benchmark_glue.dense_host(model)
    assert type(dense).__name__ == f"{'IBert' if host_type == 'ibert' else host_type.title()}ForSequenceClassification"
    ids = torch.randint(5, TINY["vocab_size"], (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[:, 0] = 2
    with torch.no_grad():
        expected = reconfigure(model, prune_mode="none")(ids, mask).logits
        torch.testing.assert_close(dense(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5, rtol=0)


def test_distill_reports_bad_inputs_without_leaving_folders(setup, tmp_path, capsys):
    host, _, _ = setup
    out = tmp_path / "out"
    assert distill_scout_glue.main(["--restore", str(host), "--task", "SST2", "--data_dir", str(tmp_path / "nowhere"),
                                    "--output_dir", str(out), "--no_progress"]) == 2
    assert "GLUE SST2 train file not found" in capsys.readouterr().err
    assert not out.exists() and not out.with_name("out.partial").exists()
    assert distill_scout_glue.main(["--restore", str(host), "--task", "SST2", "--factor", "3",
                                    "--output_dir", str(out), "--no_progress"]) == 2
    assert "approx_factor 3 does not split" in capsys.readouterr().err


def test_eval_glue_output_file_feeds_the_glue_figure(capsys, tmp_path, distilled, setup):
    from ltp_nlp.results import ABT_APPROX, CONCRETE_UNTRAINED, read_eval_file

    _, glue, _ = setup
    data = ["--task", "SST2", "--data_dir", str(glue), "--json"]
    path = tmp_path / "abt.json"
    out = _json(capsys, eval_glue.main, ["--checkpoint", str(distilled), *data, "--keep-rates", "0.3", "0.7",
                                         "--output", str(path)])
    assert json.loads(path.read_text()) == out and [r["learned"] for r in out["rows"]] == [False, False]
    points = read_eval_file(path)
    assert [(p.method, p.metric, p.kept) for p in points] == \
        [(ABT_APPROX, r["accuracy"], r["kept_mean"]) for r in out["rows"]]
    path = tmp_path / "concrete.json"
    out = _json(capsys, eval_glue.main, ["--checkpoint", str(distilled), *data, "--prune_mode", "sttabt_concrete",
                                         "--p_logit", "-1", "--output", str(path), "--label", "mine"])
    assert out["learned"] is False and out["method"] == "mine"
    assert read_eval_file(path)[0].method == "mine"
    out["method"] = None
    path.write_text(json.dumps(out))
    assert read_eval_file(path)[0].method == CONCRETE_UNTRAINED


def test_distill_refuses_an_existing_scout_and_bad_flags(setup, distilled, capsys, monkeypatch):
    host, glue, _ = setup
    before = {p: p.read_bytes() for p in sorted(distilled.rglob("*")) if p.is_file()}
    argv = ["--restore", str(host), "--task", "SST2", "--data_dir", str(glue), "--factor", "2",
            "--output_dir", str(distilled), "--no_progress"]
    assert distill_scout_glue.main(argv) == 2
    assert f"--output_dir {distilled} already holds a run" in capsys.readouterr().err
    for flags, message in [(["--epochs", "nan"], "--epochs must be a finite number > 0, got nan"),
                           (["--bs", "0"], "--bs must be a whole number >= 1, got 0"),
                           (["--max_train_samples", "0"], "--max_train_samples must be a whole number >= 1"),
                           (["--lr=-1"], "--lr must be a finite number > 0")]:
        assert distill_scout_glue.main([*argv, "--overwrite_output_dir", *flags]) == 2
        assert message in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distill_scout_glue.main([*argv, "--overwrite_output_dir", "--device", "cuda"]) == 2
    assert "--device cuda: CUDA is not available on this machine" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in sorted(distilled.rglob("*")) if p.is_file()} == before
    assert not distilled.with_name("approx.partial").exists()


def test_eval_glue_output_refusal_bad_flags_and_long_sentences(capsys, tmp_path, distilled):
    """The model has 40 positions: 60-word sentences at the default --max_length 128 are truncated, with a note."""
    (tmp_path / "SST-2").mkdir()
    rows = ["sentence\tlabel"] + [f"{' '.join(['good', 'film'] * 30)}\t1", "bad plot\t0"] * 3
    (tmp_path / "SST-2" / "dev.tsv").write_text("\n".join(rows) + "\n")
    path = tmp_path / "result.json"
    path.write_text('{"task": "SST2", "another": "run"}')
    data = ["--checkpoint", str(distilled), "--task", "SST2", "--data_dir", str(tmp_path), "--json",
            "--output", str(path)]
    assert eval_glue.main(data) == 2
    assert f"--output {path} already exists (another run's results): pass --overwrite_output_dir" in \
        capsys.readouterr().err
    assert json.loads(path.read_text()) == {"task": "SST2", "another": "run"}
    for flags, message in [(["--batch_size", "0"], "--batch_size must be a whole number >= 1, got 0"),
                           (["--keep-rates", "0.5", "1.5"], "--keep-rates must be in (0, 1], got 1.5"),
                           (["--final_token_threshold", "nan"], "--final_token_threshold must be a finite number"),
                           (["--max_length", "0"], "--max_length must be a whole number >= 1, got 0")]:
        assert eval_glue.main([*data, *flags]) == 2
        assert message in capsys.readouterr().err
    assert benchmark_glue.main(["--checkpoint", str(distilled), "--task", "SST2", "--repeats", "0"]) == 2
    assert "--repeats must be a whole number >= 1, got 0" in capsys.readouterr().err
    assert eval_glue.main([*data, "--overwrite_output_dir", "--token_keep_rate", "0.5"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert json.loads(path.read_text()) == out and out["examples"] == 6
    assert captured.err.count("note: --max_length 128 is more than the model's 40 positions") == 1
