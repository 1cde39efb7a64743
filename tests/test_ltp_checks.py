"""Issue 11 (text): every bad LTP setting, GLUE file, checkpoint folder, flag and output folder gives a clear
error naming it; nothing already written is replaced. Pure functions and tiny files only: fast."""
from __future__ import annotations

import json
import os
import math

import pytest
import torch
from safetensors.torch import save_file

import ltp_nlp  # noqa: F401  (registers the Auto classes)
from ltp_nlp import LTPConfig, LTPForSequenceClassification
from ltp_nlp.cli_checks import check_device, check_flags, check_model_folder, is_hub_name
from ltp_nlp.glue import GlueFormatError, load_glue, read_glue_tsv
from ltp_nlp.outputs import (OutputExistsError, check_output_dir, check_output_file, save_atomically,
                             write_json)
from ltp_nlp.positions import clamp_max_length, model_max_length
from transformers import AutoModelForSequenceClassification, BertConfig, RobertaConfig

TINY = dict(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=32)

BAD_FIELDS = [
    ("final_token_threshold", math.nan, "finite number >= 0"),
    ("final_token_threshold", -0.1, "finite number >= 0"),
    ("final_token_threshold", math.inf, "finite number >= 0"),
    ("final_token_threshold", "0.01", "must be a number"),
    ("scoring_mode", "bogus", "one of mean, mean_norm"),
    ("prune_mode", "threshold", "one of none, absolute_threshold, topk"),
    ("host_type", "gpt2", "one of bert, roberta, ibert"),
    ("token_keep_rate", 0.0, "in (0, 1]"),
    ("token_keep_rate", 1.5, "in (0, 1]"),
    ("token_keep_rate", math.nan, "in (0, 1]"),
    ("score_length", 0, "whole number >= 1"),
    ("score_length", 12.5, "whole number >= 1"),
    ("approx_factor", 0, "whole number >= 1"),
    ("p_logit", math.nan, "finite number"),
    ("regularise_padding", "yes", "true or false"),
    ("masking_mode", "medium", "one of soft, hard"),
    ("lambda_threshold", -1.0, "finite number >= 0"),
]


@pytest.mark.parametrize("name, value, allowed", BAD_FIELDS, ids=[f"{n}={v!r}" for n, v, _ in BAD_FIELDS])
def test_bad_ltp_setting_fails_at_construction(name, value, allowed):
    with pytest.raises(ValueError) as err:
        LTPConfig(**{"host_type": "bert", **TINY, name: value})
    text = str(err.value)
    assert text.startswith(f"{name} must be") and allowed in text and text.endswith(f"got {value!r}")


def test_good_values_are_normalised():
    config = LTPConfig(host_type="bert", final_token_threshold=0, score_length=64.0, token_keep_rate=1, **TINY)
    assert config.final_token_threshold == 0.0 and isinstance(config.final_token_threshold, float)
    assert config.score_length == 64 and isinstance(config.score_length, int)
    with pytest.raises(ValueError, match="token_keep_rate must be in"):
        config.token_keep_rate = 2.0   # also on assignment
    assert config.token_keep_rate == 1.0


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ltp")
    torch.manual_seed(0)
    LTPForSequenceClassification(LTPConfig(host_type="bert", prune_mode="absolute_threshold", **TINY)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("loader", [LTPForSequenceClassification, AutoModelForSequenceClassification])
@pytest.mark.parametrize("override, message", [
    (dict(final_token_threshold=math.nan), "final_token_threshold must be a finite number >= 0, got nan"),
    (dict(scoring_mode="bogus"), "scoring_mode must be one of mean, mean_norm, got 'bogus'"),
    (dict(token_keep_rate=2.0), "token_keep_rate must be in (0, 1], got 2.0"),
], ids=["nan-threshold", "scoring-mode", "keep-rate"])
def test_from_pretrained_override_is_checked(saved, loader, override, message):
    with pytest.raises(ValueError) as err:
        loader.from_pretrained(saved, **override)
    assert message in str(err.value)


@pytest.mark.parametrize("loader", [LTPForSequenceClassification, AutoModelForSequenceClassification])
def test_hand_edited_config_fails_on_load(saved, tmp_path, loader):
    import shutil

    folder = tmp_path / "edited"
    shutil.copytree(saved, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "scoring_mode": "median"}))
    with pytest.raises(ValueError, match="scoring_mode must be one of mean, mean_norm, got 'median'"):
        loader.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"config.json: scoring_mode must be one of mean, mean_norm"):
        check_model_folder(str(folder), "--restore")   # the tools' check, before loading, names the file


# ---- GLUE files ---------------------------------------------------------------------------------------


def test_header_without_rows_names_the_file(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(GlueFormatError, match=r"SST-2/dev.tsv: a header and no rows"):
        load_glue("SST2", tmp_path, "dev")
    (tmp_path / "SST-2" / "dev.tsv").write_text("\n\n")
    with pytest.raises(GlueFormatError, match="dev.tsv: the file is empty"):
        load_glue("SST2", tmp_path, "dev")


def test_wrong_columns_and_labels_name_the_file(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\tb\n")   # an MRPC file as SST-2
    with pytest.raises(GlueFormatError, match=r"train.tsv:1: header .* fits neither GLUE layout for SST2"):
        read_glue_tsv(path, "SST2")
    path.write_text("sentence\tlabel\ngood film\t2\n")
    with pytest.raises(GlueFormatError, match=r"train.tsv:2: label '2' is not one of \['0', '1'\]"):
        read_glue_tsv(path, "SST2")
    with pytest.raises(FileNotFoundError, match="the folder .*missing does not exist"):
        load_glue("SST2", tmp_path / "missing", "train")


# ---- model positions ------------------------------------------------------------------------------------


def test_model_max_length_counts_roberta_offset():
    assert model_max_length(BertConfig(max_position_embeddings=64)) == 64
    assert model_max_length(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert model_max_length({"model_type": "ltp", "host_type": "roberta", "max_position_embeddings": 40,
                             "pad_token_id": 1}) == 38
    assert model_max_length({"model_type": "bert"}) is None


def test_clamp_max_length_notes_once():
    notes = []
    assert clamp_max_length(128, BertConfig(max_position_embeddings=64), note=notes.append) == 64
    assert clamp_max_length(32, BertConfig(max_position_embeddings=64), note=notes.append) == 32
    assert notes == ["note: --max_seq_length 128 is more than the model's 64 positions: inputs are truncated to "
                     "64 tokens"]


# ---- flags, devices, folders -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind, value, message", [
    ("positive_int", 0, "--flag must be a whole number >= 1, got 0"),
    ("positive_int", -3, "--flag must be a whole number >= 1, got -3"),
    ("positive", math.nan, "--flag must be a finite number > 0, got nan"),
    ("positive", -1e-5, "--flag must be a finite number > 0, got -1e-05"),
    ("non_negative", -1.0, "--flag must be a finite number >= 0, got -1.0"),
    ("fraction", 0.0, "--flag must be in (0, 1], got 0.0"),
    ("fraction", 1.01, "--flag must be in (0, 1], got 1.01"),
    ("finite", math.inf, "--flag must be a finite number, got inf"),
])
def test_check_flags(kind, value, message):
    with pytest.raises(ValueError) as err:
        check_flags([("--ok", kind, None), ("--flag", kind, value)])
    assert str(err.value) == message


def test_cuda_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda: CUDA is not available on this machine.*use --device cpu"):
        check_device("cuda")
    with pytest.raises(ValueError, match="--device 'gpu0' is not a device"):
        check_device("gpu0")
    assert check_device("cpu") == "cpu"


def _folder(tmp_path, config, weights: bytes | dict | None):
    tmp_path.mkdir(exist_ok=True)
    if config is not None:
        (tmp_path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if isinstance(weights, dict):
        save_file(weights, tmp_path / "model.safetensors")
    elif weights is not None:
        (tmp_path / "model.safetensors").write_bytes(weights)
    return str(tmp_path)


WEIGHTS = {"bert.embeddings.word_embeddings.weight": torch.zeros(4, 2)}


@pytest.mark.parametrize("config, weights, message", [
    (None, None, "--restore {p} has no config.json"),
    ("", WEIGHTS, "--restore: {p}/config.json is not valid JSON"),
    ('{"model_type": "bert", "hidd', WEIGHTS, "--restore: {p}/config.json is not valid JSON"),
    ("[1, 2]", WEIGHTS, "holds a JSON list, not a configuration object"),
    ({"model_type": "gpt2", "architectures": ["GPT2ForSequenceClassification"]}, WEIGHTS,
     "--restore {p} holds a 'gpt2' model (architectures ['GPT2ForSequenceClassification']): expected ltp, bert"),
    ({"model_type": "bert"}, None, "--restore {p} has no weights (model.safetensors or pytorch_model.bin)"),
    ({"model_type": "bert"}, b"", "--restore: {p}/model.safetensors is not a readable safetensors file"),
    ({"model_type": "bert"}, "truncated", "--restore: {p}/model.safetensors is not a readable safetensors file"),
], ids=["no-config", "empty-config", "truncated-config", "list-config", "foreign", "no-weights", "empty-weights",
        "truncated-weights"])
def test_bad_checkpoint_folder(tmp_path, config, weights, message):
    folder = tmp_path / "ckpt"
    if weights == "truncated":
        _folder(folder, None, WEIGHTS)
        data = (folder / "model.safetensors").read_bytes()
        weights = data[:-8]
    path = _folder(folder, config, weights)
    with pytest.raises(ValueError) as err:
        check_model_folder(path, "--restore")
    text = str(err.value)
    assert message.format(p=path) in text and "weights_only" not in text


def test_bin_weights_checked_and_good_folder_passes(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "pytorch_model.bin").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="pytorch_model.bin is not a readable torch weights file") as err:
        check_model_folder(str(folder), "--checkpoint")
    assert "weights_only" not in str(err.value)
    torch.save(WEIGHTS, folder / "pytorch_model.bin")
    assert check_model_folder(str(folder), "--checkpoint")["model_type"] == "bert"


@pytest.mark.parametrize("edit, message", [
    (dict(hidden_size=8, intermediate_size=12), "holds word embeddings of shape [30, 16] but config.json says "
                                                "vocab_size 30, hidden_size 8"),
    (dict(num_hidden_layers=3), "holds 2 layers but config.json says num_hidden_layers 3"),
    (dict(host_type="roberta"), "holds no roberta. weights (its keys start with bert, classifier)"),
], ids=["width", "depth", "host"])
def test_weights_of_another_architecture(saved, tmp_path, edit, message):
    import shutil

    folder = tmp_path / "other"
    shutil.copytree(saved, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ValueError) as err:
        check_model_folder(str(folder), "--checkpoint")
    assert str(err.value).startswith(f"--checkpoint: {folder}/model.safetensors") and message in str(err.value)


def test_missing_folder_and_hub_names(tmp_path):
    with pytest.raises(ValueError, match=r"--model_name_or_path .*nowhere does not exist"):
        check_model_folder(str(tmp_path / "nowhere"), "--model_name_or_path", hub_ok=True)
    assert check_model_folder("bert-base-uncased", "--model_name_or_path", hub_ok=True) is None
    assert is_hub_name("FacebookAI/roberta-base") and not is_hub_name("./local/folder") and not is_hub_name("/abs")


# ---- output folders ----------------------------------------------------------------------------------------


def test_non_empty_output_dir_is_refused(tmp_path):
    check_output_dir(tmp_path / "new", overwrite=False)   # missing: fine
    (tmp_path / "run").mkdir()
    check_output_dir(tmp_path / "run", overwrite=False)   # empty: fine
    (tmp_path / "run" / "config.json").write_text("{}")
    with pytest.raises(OutputExistsError, match=r"--output_dir .*run already holds a run \(config.json\): pass "
                                                r"--overwrite_output_dir to replace it"):
        check_output_dir(tmp_path / "run", overwrite=False)
    check_output_dir(tmp_path / "run", overwrite=True)
    check_output_dir(tmp_path / "run", overwrite=False, resuming=True)
    with pytest.raises(OutputExistsError, match="already exists"):
        check_output_file(tmp_path / "run" / "config.json", overwrite=False)


def test_atomic_writes_leave_no_partial_files(tmp_path):
    write_json(tmp_path / "results.json", {"b": 1, "a": math.pi})
    assert json.loads((tmp_path / "results.json").read_text()) == {"a": math.pi, "b": 1}
    (tmp_path / "model.bin").write_text("old")

    def failing(folder):
        open(f"{folder}/model.bin", "w").write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_atomically(failing, tmp_path)
    assert (tmp_path / "model.bin").read_text() == "old"                   # the old file is whole
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no scratch left
    save_atomically(lambda folder: open(f"{folder}/model.bin", "w").write("new"), tmp_path)
    assert (tmp_path / "model.bin").read_text() == "new"


def test_scratch_of_a_killed_save_is_removed_by_the_next_one(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()                     # a pid that has exited
    stale = [tmp_path / f".saving-{dead}-abc", tmp_path / ".saving-old_layout"]
    live = tmp_path / f".saving-{os.getpid()}-busy"                     # a save still running here
    for folder in stale + [live]:
        folder.mkdir()
        (folder / "model.bin").write_text("half")
    save_atomically(lambda folder: open(f"{folder}/model.bin", "w").write("new"), tmp_path)
    assert (tmp_path / "model.bin").read_text() == "new"
    assert not any(p.exists() for p in stale) and (live / "model.bin").exists()


def test_bare_encoder_folder_passes_and_is_still_checked(tmp_path):
    """``BertModel.save_pretrained`` writes keys without the ``bert.`` prefix (sentence-transformers'
    MiniLM ships so); transformers loads such a folder into a task model, so the check accepts it,
    and still compares its width and depth with config.json."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=32)
    folder = tmp_path / "bare"
    BertModel(config).save_pretrained(folder)
    assert check_model_folder(str(folder), "--model_name_or_path")["model_type"] == "bert"
    saved = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**saved, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="holds 2 layers but config.json says num_hidden_layers 3"):
        check_model_folder(str(folder), "--model_name_or_path")
