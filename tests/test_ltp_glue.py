"""GLUE reading (ltp_nlp.glue); the metrics are in test_glue_metrics.py.

Tiny TSV files written into tmp_path cover every task in both column layouts; the real GLUE files in
../shared/data/glue are checked when that folder exists.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from ltp_nlp.glue import (
    GLUE_TASKS,
    GlueFormatError,
    from_hf_layout,
    glue_file,
    load_glue,
    task_spec,
    tokenize_glue,
    unquote_csv_field,
)

REAL_GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"
BOM = "\ufeff"
UNBALANCED = '"hello'  # GLUE text with an unbalanced quote: must come back verbatim


def write_tsv(folder: Path, name: str, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tsv(*fields: object) -> str:
    return "\t".join(str(field) for field in fields)


# ---------------------------------------------------------------------------------------------------
# The GLUE layout: every task's own headers and label strings
# ---------------------------------------------------------------------------------------------------

MNLI_HEADER = tsv(
    "index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
    "sentence1_parse", "sentence2_parse", "sentence1", "sentence2",
    "label1", "label2", "label3", "label4", "label5", "gold_label",
)
STSB_HEADER = tsv("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score")

# task -> (file name, lines, expected sentence1, expected sentence2 or None, expected labels)
GLUE_LAYOUT_FILES = {
    "RTE": ("dev.tsv", [
        tsv("index", "sentence1", "sentence2", "label"),
        tsv(0, UNBALANCED, "A b.", "entailment"),
        tsv(1, "C d.", "E f.", "not_entailment"),
    ], [UNBALANCED, "C d."], ["A b.", "E f."], [0, 1]),
    "MRPC": ("dev.tsv", [
        BOM + tsv("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        tsv(1, 11, 12, "A b.", UNBALANCED),
        tsv(0, 13, 14, '"quoted"', "E f."),
    ], ["A b.", '"quoted"'], [UNBALANCED, "E f."], [1, 0]),
    "STSB": ("dev.tsv", [
        STSB_HEADER,
        tsv(0, "main-captions", "MSRvid", "2012test", "0000", "none", "none", UNBALANCED, "A b.", "5.000"),
        tsv(1, "main-news", "MSRpar", "2012test", "0001", "none", "none", "C d.", "E f.", "0.400"),
    ], [UNBALANCED, "C d."], ["A b.", "E f."], [5.0, 0.4]),
    "SST2": ("dev.tsv", [
        tsv("sentence", "label"),
        tsv(UNBALANCED + " world ", 1),
        tsv("null", 0),  # a pandas reader would make this a missing value
    ], [UNBALANCED + " world ", "null"], None, [1, 0]),
    "QNLI": ("dev.tsv", [
        tsv("index", "question", "sentence", "label"),
        tsv(0, "Who?", UNBALANCED, "not_entailment"),
        tsv(1, "What?", "That.", "entailment"),
    ], ["Who?", "What?"], [UNBALANCED, "That."], [1, 0]),
    "QQP": ("dev.tsv", [
        tsv("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
        tsv(5, 1, 2, "Why?", UNBALANCED, 0),
        tsv(6, 3, 4, "How?", "How so?", 1),
    ], ["Why?", "How?"], [UNBALANCED, "How so?"], [0, 1]),
    "MNLI": ("dev_matched.tsv", [
        MNLI_HEADER,
        tsv(0, 31193, "31193n", "government", "( A )", "( B )", "(ROOT A)", "(ROOT B)", UNBALANCED, "B.",
            "neutral", "neutral", "neutral", "neutral", "neutral", "neutral"),
        tsv(1, 101457, "101457e", "telephone", "( C )", "( D )", "(ROOT C)", "(ROOT D)", "C.", "D.",
            "entailment", "entailment", "entailment", "entailment", "entailment", "entailment"),
        tsv(2, 134793, "134793c", "fiction", "( E )", "( F )", "(ROOT E)", "(ROOT F)", "E.", "F.",
            "contradiction", "neutral", "contradiction", "contradiction", "contradiction", "contradiction",
            "an extra field"),  # more fields than the header: columns are taken by header name
    ], [UNBALANCED, "C.", "E."], ["B.", "D.", "F."], [2, 1, 0]),
    "CoLA": ("dev.tsv", [  # no header
        tsv("gj04", 1, "", UNBALANCED),
        tsv("gj04", 0, "*", "Him went."),
    ], [UNBALANCED, "Him went."], None, [1, 0]),
}


@pytest.mark.parametrize("task", sorted(GLUE_LAYOUT_FILES))
def test_glue_layout_is_read_for_every_task(tmp_path, task):
    file_name, lines, sentence1, sentence2, labels = GLUE_LAYOUT_FILES[task]
    spec = task_spec(task)
    write_tsv(tmp_path / spec.folder, file_name, lines)

    dataset = load_glue(task, tmp_path, split="dev")

    expected_columns = ["sentence1", "sentence2", "label"] if sentence2 else ["sentence1", "label"]
    assert dataset.column_names == expected_columns
    assert dataset["sentence1"] == sentence1
    if sentence2:
        assert dataset["sentence2"] == sentence2
    assert dataset["label"] == pytest.approx(labels)
    assert isinstance(dataset[0]["label"], float if spec.is_regression else int)


# ---------------------------------------------------------------------------------------------------
# The Hugging Face layout: hub column names, integer labels in the hub's order, CSV quoting
# ---------------------------------------------------------------------------------------------------

QUOTED = '"say ""hi"" now"'  # a CSV-quoted field, as pandas / datasets write it
UNQUOTED = 'say "hi" now'

# task -> (hub text columns, hub labels of the two rows, expected class indices in GLUE order)
HF_LAYOUT_COLUMNS = {
    "RTE": (("sentence1", "sentence2"), (0, 1), [0, 1]),
    "MRPC": (("sentence1", "sentence2"), (1, 0), [1, 0]),
    "STSB": (("sentence1", "sentence2"), (4.25, 0.0), [4.25, 0.0]),
    "SST2": (("sentence",), (0, 1), [0, 1]),
    "QNLI": (("question", "sentence"), (1, 0), [1, 0]),
    "QQP": (("question1", "question2"), (0, 1), [0, 1]),
    "MNLI": (("premise", "hypothesis"), (0, 2), [1, 0]),  # hub: entailment, neutral, contradiction
    "CoLA": (("sentence",), (1, 0), [1, 0]),
}


@pytest.mark.parametrize("task", sorted(HF_LAYOUT_COLUMNS))
def test_hf_layout_is_read_for_every_task(tmp_path, task):
    text_columns, hub_labels, labels = HF_LAYOUT_COLUMNS[task]
    spec = task_spec(task)
    first_texts = [QUOTED, UNBALANCED][: len(text_columns)]
    second_texts = ["Plain.", "Text."][: len(text_columns)]
    write_tsv(tmp_path / spec.folder, "train.tsv", [
        tsv(*text_columns, "label", "idx"),
        tsv(*first_texts, hub_labels[0], 0),
        tsv(*second_texts, hub_labels[1], 1),
    ])

    dataset = load_glue(task, tmp_path, split="train")

    assert dataset["sentence1"] == [UNQUOTED, "Plain."]
    if spec.is_pair:
        assert dataset["sentence2"] == [UNBALANCED, "Text."]
    assert dataset["label"] == pytest.approx(labels)


def test_hf_layout_without_idx_column_is_recognised(tmp_path):
    write_tsv(tmp_path / "MNLI", "train.tsv", [tsv("premise", "hypothesis", "label"), tsv("A.", "B.", 1)])
    assert load_glue("mnli", tmp_path)["label"] == [2]  # hub 1 = neutral


def test_from_hf_layout_reorders_mnli_labels_of_a_hub_split():
    import datasets

    hub_features = datasets.Features({
        "premise": datasets.Value("string"),
        "hypothesis": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
        "idx": datasets.Value("int32"),
    })
    hub = datasets.Dataset.from_dict(
        {"premise": ["a", "b", "c"], "hypothesis": ["x", "y", "z"], "label": [0, 1, 2], "idx": [0, 1, 2]},
        features=hub_features,
    )
    dataset = from_hf_layout(hub, "MNLI")
    assert dataset.column_names == ["sentence1", "sentence2", "label"]
    assert dataset["label"] == [1, 2, 0]
    assert dataset.features["label"].names == ["contradiction", "entailment", "neutral"]


@pytest.mark.parametrize("text, expected", [
    ('"a ""b"" c"', 'a "b" c'),
    ('""', ""),
    ('"hello', '"hello'),
    ('"a" b "c"', '"a" b "c"'),
    ('plain', 'plain'),
    ('"', '"'),
])
def test_unquote_csv_field(text, expected):
    assert unquote_csv_field(text) == expected


# ---------------------------------------------------------------------------------------------------
# The task table, file lookup and errors
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alias, name", [
    ("SST-2", "SST2"), ("sst2", "SST2"), ("STS-B", "STSB"), ("stsb", "STSB"), ("mnli", "MNLI"),
    ("cola", "CoLA"), ("CoLA", "CoLA"), ("Rte", "RTE"), ("qqp", "QQP"), ("QNLI", "QNLI"), ("mrpc", "MRPC"),
])
def test_task_spec_accepts_aliases(alias, name):
    assert task_spec(alias).name == name


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown GLUE task 'wnli'") as error:
        task_spec("wnli")
    for name in GLUE_TASKS:
        assert name in str(error.value)


def test_task_table():
    assert sorted(GLUE_TASKS) == sorted(["RTE", "MRPC", "STSB", "SST2", "QNLI", "QQP", "MNLI", "CoLA"])
    assert {spec.folder for spec in GLUE_TASKS.values()} == {
        "SST-2", "STS-B", "CoLA", "MNLI", "QNLI", "QQP", "RTE", "MRPC"}
    mnli = task_spec("mnli")
    assert mnli.labels == ("contradiction", "entailment", "neutral")
    assert (mnli.dev_file, mnli.hub_config, mnli.hub_split("dev")) == ("dev_matched.tsv", "mnli", "validation_matched")
    assert task_spec("rte").labels == task_spec("qnli").labels == ("entailment", "not_entailment")
    stsb = task_spec("STS-B")
    assert (stsb.is_regression, stsb.num_labels, stsb.hub_config) == (True, 1, "stsb")
    assert task_spec("sst-2").hub_split("validation") == "validation"
    assert not task_spec("cola").has_header and not task_spec("sst2").is_pair


def test_missing_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_glue("SST-2", tmp_path, split="dev")
    message = str(error.value)
    assert str(tmp_path / "SST-2" / "dev.tsv") in message
    assert "--data_dir" in message


def test_data_dir_may_be_the_task_folder(tmp_path):
    folder = tmp_path / "SST-2"
    write_tsv(folder, "dev.tsv", [tsv("sentence", "label"), tsv("a", 1)])
    assert glue_file("sst2", folder, "validation") == folder / "dev.tsv"
    assert load_glue("sst2", folder, "dev")["label"] == [1]
    with pytest.raises(FileNotFoundError):  # another task's folder is not taken for this one
        load_glue("cola", folder, "dev")


def test_unknown_split_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="train or dev"):
        load_glue("rte", tmp_path, split="test")


def test_short_row_names_file_and_line(tmp_path):
    path = write_tsv(tmp_path / "RTE", "train.tsv", [
        tsv("index", "sentence1", "sentence2", "label"), tsv(0, "a", "b", "entailment"), tsv(1, "a only"),
    ])
    with pytest.raises(GlueFormatError, match=f"{path}:3: 2 tab-separated fields"):
        load_glue("rte", tmp_path)


def test_unknown_label_names_file_and_line(tmp_path):
    path = write_tsv(tmp_path / "QNLI", "train.tsv", [tsv("index", "question", "sentence", "label"), tsv(0, "q", "s", "maybe")])
    with pytest.raises(GlueFormatError, match=f"{path}:2: label 'maybe'"):
        load_glue("qnli", tmp_path)


def test_bad_score_names_file_and_line(tmp_path):
    path = write_tsv(tmp_path / "STS-B", "train.tsv", [tsv("sentence1", "sentence2", "label", "idx"), tsv("a", "b", "high", 0)])
    with pytest.raises(GlueFormatError, match=f"{path}:2: STSB score 'high'"):
        load_glue("stsb", tmp_path)


def test_wrong_header_says_what_was_expected(tmp_path):
    write_tsv(tmp_path / "MRPC", "train.tsv", [tsv("sentence", "label"), tsv("a", 1)])
    with pytest.raises(GlueFormatError, match="fits neither GLUE layout for MRPC"):
        load_glue("mrpc", tmp_path)


# ---------------------------------------------------------------------------------------------------
# Tokenization with a tiny offline tokenizer
# ---------------------------------------------------------------------------------------------------

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "is", "dancing", ".", "the", "dog", "runs"]


@pytest.fixture
def tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    assert tokenizer.vocab_size == len(VOCAB)
    return tokenizer


def test_tokenize_pair_task_truncates_without_padding(tmp_path, tokenizer):
    write_tsv(tmp_path / "STS-B", "dev.tsv", [
        STSB_HEADER,
        tsv(0, "g", "f", "y", "0", "none", "none", "A man is dancing.", "The dog runs.", "3.800"),
        tsv(1, "g", "f", "y", "1", "none", "none", "a man", "dog", "1.000"),
    ])
    encoded = tokenize_glue(load_glue("stsb", tmp_path, "dev"), tokenizer, "STS-B", max_length=8)

    assert set(encoded.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    first, second = encoded[0], encoded[1]
    assert len(first["input_ids"]) == 8  # 5 + 3 word pieces + 3 specials = 11, truncated
    assert second["input_ids"] == [2, 5, 6, 3, 11, 3]  # [CLS] a man [SEP] dog [SEP]: not padded
    assert second["token_type_ids"] == [0, 0, 0, 0, 1, 1]
    assert second["attention_mask"] == [1] * 6
    assert first["labels"] == pytest.approx(3.8) and isinstance(first["labels"], float)


def test_tokenize_single_sentence_task(tmp_path, tokenizer):
    write_tsv(tmp_path / "SST-2", "train.tsv", [tsv("sentence", "label"), tsv("the dog runs", 1), tsv("zebra", 0)])
    encoded = tokenize_glue(load_glue("sst2", tmp_path), tokenizer, "sst2")
    assert encoded["input_ids"] == [[2, 10, 11, 12, 3], [2, 1, 3]]
    assert encoded["labels"] == [1, 0]
    assert "sentence1" not in encoded.column_names


# ---------------------------------------------------------------------------------------------------
# The real GLUE files in ../shared/data/glue
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_glue() -> Path:
    if not REAL_GLUE.is_dir():
        pytest.skip(f"../shared/data/glue is missing (looked for {REAL_GLUE}): real GLUE files not checked")
    return REAL_GLUE


@pytest.mark.parametrize("task, split, rows", [
    ("SST-2", "dev", 872), ("SST-2", "train", 67_349), ("CoLA", "dev", 1_043), ("MRPC", "dev", 408),
    ("RTE", "dev", 277), ("STS-B", "dev", 1_500),
])
def test_real_glue_row_counts(real_glue, task, split, rows):
    assert len(load_glue(task, real_glue, split)) == rows


def test_real_mrpc_bom_header(real_glue):
    dataset = load_glue("MRPC", real_glue, "dev")
    assert dataset[0]["sentence1"].startswith("He said the foodservice pie business")
    assert dataset[0]["sentence2"].startswith('"The foodservice pie business')  # unbalanced quote kept
    assert sum(dataset["label"]) == 279


def test_real_cola_and_rte_labels(real_glue):
    assert sum(load_glue("cola", real_glue, "dev")["label"]) == 721
    rte = load_glue("rte", real_glue, "dev")  # Hugging Face layout, written with CSV quoting
    assert rte.features["label"].names == ["entailment", "not_entailment"]
    assert rte["label"].count(0) == 146
    assert '"Smash" is the title of the third album of the Offspring.' in rte["sentence2"]


def test_real_stsb_float_labels(real_glue):
    labels = load_glue("STS-B", real_glue, "dev")["label"]
    assert all(isinstance(label, float) for label in labels)
    assert labels[0] == 5.0 and min(labels) >= 0.0 and max(labels) <= 5.0
