"""tools/run_glue.py -> tools/convert_to_ltp.py -> tools/run_ltp.py (soft, hard, topk) end to end on a tiny
random BERT, a tiny offline tokenizer and a toy SST-2 written as GLUE TSVs; and their errors."""
from __future__ import annotations

import json
import math
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ltp_nlp  # noqa: F401  (registers the Auto classes)
from transformers import (AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification,
                          BertTokenizerFast)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import convert_to_ltp  # noqa: E402
import run_glue  # noqa: E402
import run_ltp  # noqa: E402

WORDS = ["good", "bad", "movie", "film", "the", "a", "was", "is", "very", "not", "plot", "actors", "great", "dull",
         "fun", "story", "and", "but", "it", "this"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
TINY = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=48,
            max_position_embeddings=64, initializer_range=0.3, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)
QUIET = ["--report_to", "none"]
SOFT_FOLDER = "checkpoints/base/SST2/absolute_threshold/rate_0.01/temperature_0.001/lambda_0.1/lr_2e-05/lr_threshold_0.001"


def write_sst2(folder: Path, n_train: int = 48, n_dev: int = 16) -> Path:
    rng = random.Random(0)
    (folder / "SST-2").mkdir(parents=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["sentence\tlabel"]
        for i in range(n):
            words = rng.choices(WORDS[2:], k=rng.randint(4, 14))
            words.insert(rng.randint(0, len(words)), "good" if i % 2 else "bad")
            lines.append(f"{' '.join(words)}\t{i % 2}")
        (folder / "SST-2" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_pretrained(folder: Path) -> Path:
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    BertTokenizerFast.from_pretrained(str(folder), local_files_only=True).save_pretrained(folder)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(**TINY)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    return write_sst2(tmp_path_factory.mktemp("glue"))


@pytest.fixture(scope="module")
def dense(tmp_path_factory, glue) -> Path:
    """A fine-tuned dense checkpoint written by run_glue (not converted)."""
    root = tmp_path_factory.mktemp("dense")
    out = root / "OUT"
    rc = run_glue.main(["--model_name_or_path", str(write_pretrained(root / "pretrained")), "--task", "SST2",
                        "--data_dir", str(glue), "--output_dir", str(out), "--do_train", "--do_eval",
                        "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
                        "--max_seq_length", "32", "--save_strategy", "no", "--use_cpu", "--disable_tqdm", "true",
                        *QUIET])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory, dense) -> Path:
    """A copy of ``dense`` after convert_to_ltp, with the dense model's logits on a probe batch."""
    import shutil

    out = tmp_path_factory.mktemp("converted") / "OUT"
    shutil.copytree(dense, out)
    assert convert_to_ltp.main([str(out), "--prune_mode", "absolute_threshold", "--final_token_threshold", "0.01",
                                "--scoring_mode", "mean"]) == 0
    return out


def probe(folder: Path) -> dict[str, torch.Tensor]:
    tokenizer = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    return dict(tokenizer(["the movie was very good", "bad plot but fun actors and a great story"], padding=True,
                          return_tensors="pt"))


def test_run_glue_writes_a_fine_tuned_checkpoint(dense):
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "trainer_state.json"):
        assert (dense / name).is_file(), name
    assert json.loads((dense / "config.json").read_text())["model_type"] == "bert"
    assert "eval_accuracy" in json.loads((dense / run_glue.EVAL_RESULTS).read_text())


def test_convert_to_ltp_keeps_the_dense_model(dense, converted):
    config = json.loads((converted / "config.json").read_text())
    assert config["architectures"] == ["LTPForSequenceClassification"] and config["model_type"] == "ltp"
    assert config["host_type"] == "bert" and config["prune_mode"] == "absolute_threshold"
    assert config["final_token_threshold"] == 0.01 and config["scoring_mode"] == "mean"
    assert not (converted / "trainer_state.json").exists()
    assert not [p for p in converted.iterdir() if p.name.startswith(".config.json")]   # no temporary file left
    inputs = probe(dense)
    host = BertForSequenceClassification.from_pretrained(dense).eval()
    model = AutoModelForSequenceClassification.from_pretrained(converted, prune_mode="none").eval()
    assert isinstance(model, ltp_nlp.LTPForSequenceClassification)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, host(**inputs).logits, atol=1e-5, rtol=0)


def test_soft_then_hard_stage_in_the_reference_layout(tmp_path, monkeypatch, glue, converted):
    monkeypatch.chdir(tmp_path)
    common = ["--arch", "ltp-base", "--task", "SST2", "--data_dir", str(glue), "--max_seq_length", "32", *QUIET]
    assert run_ltp.main([*common, "--restore", str(converted), "--lr", "2e-5", "--temperature", "1e-3", "--lambda",
                         "0.1", "--weight_decay", "0", "--bs", "64", "--masking_mode", "soft", "--epoch", "1",
                         "--save_step", "100", "--no_load", "--lr_threshold", "1e-3"]) == 0
    soft = tmp_path / SOFT_FOLDER
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "eval_results.json"):
        assert (soft / name).is_file(), name
    results = json.loads((soft / "eval_results.json").read_text())
    for key in ("eval_accuracy", "eval_baseline_gflops", "eval_gflops", "eval_relative_flops", "eval_kept_mean",
                "eval_kept_layer_3"):
        assert key in results, key
    soft_delta = load_file(soft / "model.safetensors")["bert.pruner.threshold_delta"]
    assert soft_delta.abs().sum() > 0   # the thresholds learned

    assert run_ltp.main([*common, "--restore", str(soft), "--lr", "2e-5", "--bs", "16", "--masking_mode", "hard",
                         "--epoch", "1"]) == 0
    hard = soft / "hard" / "lr_2e-05"
    assert (hard / "eval_results.json").is_file() and (hard / "checkpoint-3").is_dir()
    assert not list(hard.glob("checkpoint-*/threshold_optimizer.pt"))
    hard_weights = load_file(hard / "model.safetensors")
    assert torch.equal(hard_weights["bert.pruner.threshold_delta"], soft_delta)   # frozen in the hard stage
    assert json.loads((hard / "config.json").read_text())["prune_mode"] == "absolute_threshold"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_topk_baseline(glue, converted, capsys):
    argv = ["--task", "SST2", "--restore", str(converted), "--prune_mode", "topk", "--token_keep_rate",
            "0.3", "--lr", "1e-5", "--bs", "16", "--epoch", "1", "--no_load", "--data_dir", str(glue),
            "--max_seq_length", "32", "--max_train_samples", "16", "--max_eval_samples", "8", *QUIET]
    assert run_ltp.main(argv) == 0
    out = converted / "topk" / "keep_0.3" / "lr_1e-05"
    config = json.loads((out / "config.json").read_text())
    assert config["prune_mode"] == "topk" and config["token_keep_rate"] == 0.3
    assert config["finetuning_task"] == "SST2"  # tools/plot.py --glue reads the task from here
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_relative_flops"] < 1
    from ltp_nlp.results import MANUAL_TOPK, read_run_folder

    (point,) = read_run_folder(out)
    assert (point.task, point.method, point.relative_flops) == ("SST2", MANUAL_TOPK, results["eval_relative_flops"])

    first = snapshot(out)
    assert run_ltp.main([*argv[:7], "0.5", *argv[8:]]) == 0     # another keep rate: its own folder
    other = converted / "topk" / "keep_0.5" / "lr_1e-05"
    assert json.loads((other / "config.json").read_text())["token_keep_rate"] == 0.5
    assert snapshot(out) == first                                  # the first run is untouched
    capsys.readouterr()
    assert run_ltp.main(argv) == 2                                 # the same settings again: refused
    assert f"the output folder {out} already holds a run" in capsys.readouterr().err
    assert snapshot(out) == first


@pytest.mark.parametrize("flags, message", [
    (["--restore", "{tmp}/missing"], "does not exist"),
    (["--restore", "{converted}", "--task", "SQuAD"], "unknown GLUE task"),
    (["--restore", "{converted}", "--prune_mode", "topk", "--token_keep_rate", "0.5", "--masking_mode", "soft"],
     "has no soft masks"),
    (["--restore", "{converted}", "--token_keep_rate", "0.5"], "--token_keep_rate is for --prune_mode topk"),
    (["--restore", "{dense}"], "convert it with tools/convert_to_ltp.py"),
    (["--restore", "{converted}", "--data_dir", "{tmp}"], "file not found"),
    (["--restore", "{converted}", "--prune_mode", "sttabt_concrete", "--p_logit", "0", "--masking_mode", "soft"],
     "no approximation network"),
    (["--restore", "{converted}", "--bs", "0"], "--bs must be a whole number >= 1, got 0"),
    (["--restore", "{converted}", "--epoch", "-1"], "--epoch must be a finite number > 0, got -1.0"),
    (["--restore", "{converted}", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--restore", "{converted}", "--lr=-2e-5"], "--lr must be a finite number > 0"),
    (["--restore", "{converted}", "--max_train_samples", "0"], "--max_train_samples must be a whole number >= 1"),
    (["--restore", "{converted}", "--save_step", "0"], "--save_steps must be a whole number >= 1, got 0"),
    (["--restore", "{converted}", "--prune_mode", "topk", "--token_keep_rate", "1.5"],
     "--token_keep_rate must be in (0, 1], got 1.5"),
    (["--restore", "{converted}", "--prune_mode", "topk", "--token_keep_rate", "nan"], "--token_keep_rate must be in"),
    (["--restore", "{converted}", "--temperature", "nan"], "--temperature must be a finite number > 0"),
    (["--restore", "{tmp}/empty_config"], "config.json is not valid JSON"),
    (["--restore", "{tmp}/empty_weights"], "model.safetensors is not a readable safetensors file"),
    (["--restore", "{tmp}/nan_threshold"], "final_token_threshold must be a finite number >= 0, got nan"),
], ids=["missing-restore", "unknown-task", "topk-soft", "keep-rate-without-topk", "not-converted", "no-data",
        "concrete-without-scout", "bs", "epoch", "lr-nan", "lr-negative", "max-train-samples", "save-step",
        "keep-rate-above-1", "keep-rate-nan", "temperature-nan", "empty-config", "empty-weights", "nan-threshold"])
def test_run_ltp_bad_input(tmp_path, monkeypatch, capsys, glue, dense, converted, flags, message):
    bad = tmp_path.parent / f"{tmp_path.name}-bad"   # damaged copies of the converted checkpoint
    bad.mkdir()
    for name in ("empty_config", "empty_weights", "nan_threshold"):
        shutil.copytree(converted, bad / name, ignore=shutil.ignore_patterns("topk", "hard", "checkpoint-*"))
    (bad / "empty_config" / "config.json").write_text("")
    (bad / "empty_weights" / "model.safetensors").write_bytes(b"")
    config = json.loads((converted / "config.json").read_text())
    (bad / "nan_threshold" / "config.json").write_text(json.dumps({**config, "final_token_threshold": math.nan}))
    monkeypatch.chdir(tmp_path)
    before = sorted(converted.rglob("*"))
    flags = [f.format(tmp=bad, converted=converted, dense=dense) for f in flags]
    argv = ["--task", "SST2", "--data_dir", str(glue), *QUIET, *flags]
    assert run_ltp.main(argv) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]   # one line says what is wrong
    assert message in line and "weights_only" not in err
    assert not list(tmp_path.iterdir()) and sorted(converted.rglob("*")) == before   # nothing written


def test_convert_to_ltp_bad_input(tmp_path, capsys):
    assert convert_to_ltp.main([str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert convert_to_ltp.main([str(tmp_path)]) == 2
    assert "LTP runs on bert, roberta, ibert hosts" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **TINY}))
    assert convert_to_ltp.main([str(tmp_path), "--prune_mode", "topk", "--token_keep_rate", "1.5"]) == 2
    assert "token_keep_rate must be in (0, 1]" in capsys.readouterr().err
    assert convert_to_ltp.main([str(tmp_path)]) == 2
    assert "no model.safetensors, pytorch_model.bin or sharded index" in capsys.readouterr().err
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "bert"   # untouched


def test_a_bare_encoder_is_refused_with_what_to_do(tmp_path, capsys, glue):
    """A pretrained encoder without a classifier head (sentence-transformers' MiniLM) is not an LTP
    starting point: convert_to_ltp and run_ltp say so in one line, and leave the folder as it was."""
    from transformers import BertModel

    bare = tmp_path / "bare"
    torch.manual_seed(0)
    BertModel(BertConfig(**TINY)).save_pretrained(bare)
    before = {p.name: p.read_bytes() for p in bare.iterdir()}
    assert convert_to_ltp.main([str(bare)]) == 2
    assert "without a classifier head" in capsys.readouterr().err
    assert run_ltp.main(["--task", "SST2", "--data_dir", str(glue), "--restore", str(bare), "--prune_mode", "topk",
                         *QUIET]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "without a classifier head" in line and "tools/run_glue.py" in line and "missing" not in err.lower()
    assert {p.name: p.read_bytes() for p in bare.iterdir()} == before


def test_weight_names_of_a_sharded_checkpoint(tmp_path):
    from ltp_nlp.modeling_ltp import weight_names

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**TINY))
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "shards", max_shard_size="100KB")
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    assert sorted(weight_names(tmp_path / "shards")) == sorted(weight_names(tmp_path / "one"))


def test_run_glue_refuses_an_existing_run(tmp_path, capsys, glue, converted):
    """A non-empty --output_dir is refused before anything is loaded: the converted LTP model stays."""
    out = tmp_path / "OUT"
    shutil.copytree(converted, out, ignore=shutil.ignore_patterns("topk", "hard", "checkpoint-*"))
    before = snapshot(out)
    argv = ["--model_name_or_path", str(converted), "--task", "SST2", "--data_dir", str(glue), "--output_dir", str(out),
            "--do_train", "--do_eval", "--use_cpu", *QUIET]
    assert run_glue.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--output_dir {out} already holds a run" in err and "--overwrite_output_dir" in err
    assert snapshot(out) == before and json.loads((out / "config.json").read_text())["model_type"] == "ltp"
    # asked to overwrite: the next check still refuses an LTP checkpoint as a dense starting point
    assert run_glue.main([*argv, "--overwrite_output_dir"]) == 2
    assert "is an LTP checkpoint: train it with tools/run_ltp.py" in capsys.readouterr().err
    assert snapshot(out) == before


@pytest.mark.parametrize("flags, message", [
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be a whole number >= 1, got 0"),
    (["--num_train_epochs", "0"], "--num_train_epochs must be a finite number > 0, got 0.0"),
    (["--learning_rate", "nan"], "--learning_rate must be a finite number > 0, got nan"),
    (["--learning_rate=-1e-5"], "--learning_rate must be a finite number > 0"),
    (["--max_train_samples", "0"], "--max_train_samples must be a whole number >= 1, got 0"),
    (["--save_steps=-5"], "--save_steps must be a finite number > 0"),
    (["--max_seq_length", "0"], "--max_seq_length must be a whole number >= 1, got 0"),
    (["--model_name_or_path", "{tmp}/nowhere/model"], "nowhere/model does not exist"),
    (["--model_name_or_path", "{tmp}/gpt2"], "holds a 'gpt2' model"),
    (["--model_name_or_path", "{tmp}/truncated"], "config.json is not valid JSON"),
], ids=["batch-size", "epochs", "lr-nan", "lr-negative", "max-train-samples", "save-steps", "max-seq-length",
        "missing-model", "foreign-model", "truncated-config"])
def test_run_glue_bad_input(tmp_path, capsys, glue, dense, flags, message):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    shutil.copytree(dense, tmp_path / "truncated", ignore=shutil.ignore_patterns("checkpoint-*"))
    (tmp_path / "truncated" / "config.json").write_text('{"model_type": "be')
    out = tmp_path / "OUT"
    argv = ["--model_name_or_path", str(dense), "--task", "SST2", "--data_dir", str(glue), "--output_dir", str(out),
            "--do_train", "--do_eval", "--use_cpu", *QUIET, *[f.format(tmp=tmp_path) for f in flags]]
    assert run_glue.main(argv) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert message in line and not out.exists()


def test_convert_to_ltp_keeps_what_it_replaces(tmp_path, capsys, dense, converted):
    assert json.loads((converted / convert_to_ltp.HOST_CONFIG).read_text()) == \
        json.loads((dense / "config.json").read_text())                                   # the host's config
    assert (converted / convert_to_ltp.HOST_TRAINER_STATE).read_bytes() == (dense / "trainer_state.json").read_bytes()
    folder = tmp_path / "OUT"
    shutil.copytree(converted, folder, ignore=shutil.ignore_patterns("topk", "hard", "checkpoint-*"))
    before = snapshot(folder)
    assert convert_to_ltp.main([str(folder), "--final_token_threshold", "0.01"]) == 0     # same settings: no-op
    assert snapshot(folder) == before
    assert convert_to_ltp.main([str(folder), "--final_token_threshold", "0.05"]) == 2     # other settings: refused
    assert "already an LTP checkpoint; converting it again replaces final_token_threshold=0.01" in \
        capsys.readouterr().err
    assert snapshot(folder) == before
    copy = tmp_path / "COPY"
    assert convert_to_ltp.main([str(folder), "--final_token_threshold", "0.05", "--output_dir", str(copy)]) == 0
    assert json.loads((copy / "config.json").read_text())["final_token_threshold"] == 0.05
    assert (copy / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert snapshot(folder) == before
    assert convert_to_ltp.main([str(folder), "--output_dir", str(copy)]) == 2              # non-empty copy target
    assert "--output_dir" in capsys.readouterr().err
    assert convert_to_ltp.main([str(folder), "--final_token_threshold", "0.05", "--overwrite_output_dir"]) == 0
    assert json.loads((folder / "config.json").read_text())["final_token_threshold"] == 0.05


def write_long_sst2(folder: Path) -> Path:
    """A toy SST-2 whose positive sentences are 120 words long: more than the tiny model's 64 positions."""
    (folder / "SST-2").mkdir()
    long = " ".join(["good", "film"] * 60)
    rows = ["sentence\tlabel"] + [f"{long}\t1", "bad plot\t0"] * 4
    for split in ("train", "dev"):
        (folder / "SST-2" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return folder


def test_run_glue_truncates_long_sentences_to_the_model(tmp_path, capsys, dense):
    out = tmp_path / "OUT"
    assert run_glue.main(["--model_name_or_path", str(dense), "--task", "SST2", "--data_dir",
                          str(write_long_sst2(tmp_path)), "--output_dir", str(out), "--do_eval", "--use_cpu",
                          "--max_seq_length", "128", "--disable_tqdm", "true", *QUIET]) == 0
    err = capsys.readouterr().err
    assert err.count("note: --max_seq_length 128 is more than the model's 64 positions") == 1
    assert json.loads((out / run_glue.EVAL_RESULTS).read_text())["eval_accuracy"] >= 0


def test_run_ltp_eval_output_and_long_sentences(tmp_path, capsys, converted):
    """Sentences longer than the model's 64 positions with --max_seq_length 128: truncated with one note;
    --eval's results are not written over another run's unless asked."""
    write_long_sst2(tmp_path)
    out = tmp_path / "eval"
    argv = ["--task", "SST2", "--restore", str(converted), "--data_dir", str(tmp_path), "--eval", "--bs", "4",
            "--max_seq_length", "128", "--output_dir", str(out), *QUIET]
    assert run_ltp.main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("note: --max_seq_length 128 is more than the model's 64 positions") == 1
    first = (out / "eval_results.json").read_bytes()
    assert "eval_accuracy" in json.loads(first)
    assert run_ltp.main(argv) == 2
    assert "eval_results.json already exists" in capsys.readouterr().err
    assert (out / "eval_results.json").read_bytes() == first
    assert run_ltp.main([*argv, "--overwrite_output_dir"]) == 0
