"""GLUE reading through the ``datasets`` library.

``load_glue(task, data_dir, split)`` returns a :class:`datasets.Dataset` with one schema for every
task: ``sentence1`` (str), ``sentence2`` (str, pair tasks only) and ``label`` (a class index into the
task's label list, or a float score for STS-B).

With ``data_dir`` it reads ``data_dir/<folder>/<train|dev>.tsv`` in either of two column layouts,
told apart by the header:

* the *GLUE layout* (the files of ``download_glue_data.py``): task-specific headers (``#1 String``,
  ``question1``, ``gold_label``, ``score``, ...), labels as strings (``entailment``, ``0``), CoLA
  without a header, MRPC with a UTF-8 BOM before its header. Fields are raw text: quotes are not
  quoting characters (``"hello`` is read as it stands).
* the *Hugging Face layout* (a ``datasets`` GLUE split written to TSV): the hub's column names
  (``sentence``, ``sentence1``/``sentence2``, ``question``, ``premise``/``hypothesis``, ``label``,
  ``idx``) and labels as integer indices in the hub's label order. Such files come from a CSV writer,
  so a field that is a well-formed quoted CSV field (``"say ""hi"" now"``) is unquoted; any other field,
  an unbalanced ``"hello`` included, is read as it stands.

The rows are split with :mod:`csv` (tab delimiter, ``csv.QUOTE_NONE``) and handed to
``datasets.Dataset.from_dict``, rather than going through ``load_dataset("csv")``: its pandas parser
would turn sentences such as ``NA`` or ``null`` into missing values, rejects rows that carry more
fields than the header (some MNLI / QNLI rows do), names no file in its errors and writes an Arrow
cache under ``~/.cache``. Here a row that cannot be parsed raises :class:`GlueFormatError` naming
the file and the line; nothing is dropped silently.

Without ``data_dir`` the split comes from the hub (``datasets.load_dataset("glue", config)``) and is
brought to the same schema (MNLI's labels are reordered: the hub orders them ``entailment, neutral,
contradiction``, the GLUE processors ``contradiction, entailment, neutral``).
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import datasets

ColumnRef = Union[str, int]  # a header name, or a position in a headerless file (CoLA)

SPLITS = ("train", "dev")
SPLIT_ALIASES = {"train": "train", "dev": "dev", "validation": "dev", "val": "dev"}
TEXT_COLUMNS = ("sentence1", "sentence2")
LABEL_COLUMN = "label"
HF_LABEL_COLUMN = "label"
HF_INDEX_COLUMN = "idx"
GLUE_LAYOUT = "glue"
HF_LAYOUT = "hf"
CSV_QUOTE = '"'


class GlueFormatError(ValueError):
    """A GLUE file that cannot be parsed; the message names the file and the line."""


@dataclass(frozen=True)
class GlueTask:
    """What one GLUE task looks like on disk, on the hub and to the metrics.

    ``labels`` is the label list in the order of the GLUE processors (the class index is the
    position); it is empty for the regression task STS-B. ``hf_labels`` is the hub's order of the
    same labels, used to map the hub's integer labels onto ``labels``.
    """

    name: str
    folder: str
    text_columns: tuple[ColumnRef, ...]
    label_column: ColumnRef
    labels: tuple[str, ...]
    hub_config: str
    hf_text_columns: tuple[str, ...]
    hf_labels: tuple[str, ...]
    metric: str
    dev_file: str = "dev.tsv"
    train_file: str = "train.tsv"
    hub_name: str = "glue"
    hub_dev_split: str = "validation"

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def has_header(self) -> bool:
        """False for CoLA, whose GLUE files have no header and are read by position."""
        return isinstance(self.label_column, str)

    @property
    def output_columns(self) -> tuple[str, ...]:
        return TEXT_COLUMNS[: len(self.text_columns)] + (LABEL_COLUMN,)

    def file_name(self, split: str) -> str:
        return self.train_file if check_split(split) == "train" else self.dev_file

    def hub_split(self, split: str) -> str:
        return "train" if check_split(split) == "train" else self.hub_dev_split

    def features(self) -> datasets.Features:
        """The schema ``load_glue`` returns for this task."""
        label = datasets.Value("float32") if self.is_regression else datasets.ClassLabel(names=list(self.labels))
        columns: dict[str, Any] = {name: datasets.Value("string") for name in self.output_columns[:-1]}
        return datasets.Features({**columns, LABEL_COLUMN: label})


BINARY = ("0", "1")
NLI_BINARY = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask(
            name="RTE", folder="RTE", text_columns=("sentence1", "sentence2"), label_column="label",
            labels=NLI_BINARY, hub_config="rte", hf_text_columns=("sentence1", "sentence2"),
            hf_labels=NLI_BINARY, metric="accuracy",
        ),
        GlueTask(
            name="MRPC", folder="MRPC", text_columns=("#1 String", "#2 String"), label_column="Quality",
            labels=BINARY, hub_config="mrpc", hf_text_columns=("sentence1", "sentence2"),
            hf_labels=BINARY, metric="combined_score",
        ),
        GlueTask(
            name="STSB", folder="STS-B", text_columns=("sentence1", "sentence2"), label_column="score",
            labels=(), hub_config="stsb", hf_text_columns=("sentence1", "sentence2"),
            hf_labels=(), metric="combined_score",
        ),
        GlueTask(
            name="SST2", folder="SST-2", text_columns=("sentence",), label_column="label",
            labels=BINARY, hub_config="sst2", hf_text_columns=("sentence",),
            hf_labels=BINARY, metric="accuracy",
        ),
        GlueTask(
            name="QNLI", folder="QNLI", text_columns=("question", "sentence"), label_column="label",
            labels=NLI_BINARY, hub_config="qnli", hf_text_columns=("question", "sentence"),
            hf_labels=NLI_BINARY, metric="accuracy",
        ),
        GlueTask(
            name="QQP", folder="QQP", text_columns=("question1", "question2"), label_column="is_duplicate",
            labels=BINARY, hub_config="qqp", hf_text_columns=("question1", "question2"),
            hf_labels=BINARY, metric="combined_score",
        ),
        GlueTask(
            name="MNLI", folder="MNLI", text_columns=("sentence1", "sentence2"), label_column="gold_label",
            labels=("contradiction", "entailment", "neutral"), hub_config="mnli",
            hf_text_columns=("premise", "hypothesis"), hf_labels=("entailment", "neutral", "contradiction"),
            metric="accuracy", dev_file="dev_matched.tsv", hub_dev_split="validation_matched",
        ),
        GlueTask(
            name="CoLA", folder="CoLA", text_columns=(3,), label_column=1,
            labels=BINARY, hub_config="cola", hf_text_columns=("sentence",),
            hf_labels=BINARY, metric="matthews_correlation",
        ),
    )
}


def _normalized(name: str) -> str:
    """``SST-2``, ``sst_2`` and ``Sst2`` all become ``sst2``."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


_TASKS_BY_ALIAS: dict[str, GlueTask] = {
    _normalized(alias): task
    for task in GLUE_TASKS.values()
    for alias in (task.name, task.folder, task.hub_config)
}


def task_spec(name: str | GlueTask) -> GlueTask:
    """The :class:`GlueTask` for a name such as ``SST-2``, ``sst2``, ``STS-B``, ``stsb`` or ``mnli``."""
    if isinstance(name, GlueTask):
        return name
    task = _TASKS_BY_ALIAS.get(_normalized(str(name)))
    if task is None:
        raise ValueError(f"unknown GLUE task {name!r}: use one of {', '.join(GLUE_TASKS)}")
    return task


def check_split(split: str) -> str:
    """``train`` or ``dev`` (``validation`` is accepted for ``dev``)."""
    canonical = SPLIT_ALIASES.get(str(split).lower())
    if canonical is None:
        raise ValueError(f"unknown split {split!r}: use train or dev (validation is an alias of dev)")
    return canonical


# ---------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------


def load_glue(task: str | GlueTask, data_dir: str | Path | None = None, split: str = "train") -> datasets.Dataset:
    """One GLUE split as a ``datasets.Dataset`` with ``sentence1`` [, ``sentence2``], ``label``.

    ``data_dir`` is a GLUE folder (holding ``SST-2/``, ``MNLI/``, ...) or the task's own folder;
    ``None`` loads the split from the Hugging Face hub.
    """
    spec = task_spec(task)
    split = check_split(split)
    if data_dir is None:
        return _load_from_hub(spec, split)
    return read_glue_tsv(glue_file(spec, data_dir, split), spec)


def glue_file(task: str | GlueTask, data_dir: str | Path, split: str = "train") -> Path:
    """``data_dir/<folder>/<file>`` (or ``data_dir/<file>`` when ``data_dir`` is the task folder)."""
    spec = task_spec(task)
    data_dir = Path(data_dir).expanduser()
    file_name = spec.file_name(split)
    expected = data_dir / spec.folder / file_name
    if expected.is_file():
        return expected
    if _is_task_folder(data_dir, spec) and (data_dir / file_name).is_file():
        return data_dir / file_name
    also = f" or {data_dir / file_name}" if _is_task_folder(data_dir, spec) else ""
    raise FileNotFoundError(
        f"GLUE {spec.name} {check_split(split)} file not found: expected {expected}{also}"
        f"{'' if data_dir.is_dir() else f' (the folder {data_dir} does not exist)'}. "
        f"Pass --data_dir pointing at a GLUE folder that holds {spec.folder}/{file_name} "
        f"(as written by download_glue_data.py), or at the {spec.folder} folder itself."
    )


def _is_task_folder(folder: Path, spec: GlueTask) -> bool:
    """Whether ``folder`` is named after the task (``SST-2``, ``sst2``, ...), not after another one."""
    return _TASKS_BY_ALIAS.get(_normalized(folder.name)) is spec


def tokenize_glue(
    dataset: datasets.Dataset, tokenizer: Any, task: str | GlueTask, max_length: int = 128
) -> datasets.Dataset:
    """Tokenize a ``load_glue`` dataset: ``input_ids``, ``attention_mask`` [, ``token_type_ids``], ``labels``.

    Sequences are truncated to ``max_length`` but not padded (a data collator pads each batch). The
    text columns are removed; ``label`` becomes ``labels`` with its type kept (class index or float).
    """
    spec = task_spec(task)
    text_columns = list(TEXT_COLUMNS[: len(spec.text_columns)])
    missing = [name for name in [*text_columns, LABEL_COLUMN] if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"dataset lacks the columns {missing} for {spec.name} (it has {dataset.column_names}): "
            "tokenize the output of load_glue"
        )

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [batch[name] for name in text_columns]
        return dict(tokenizer(*texts, truncation=True, max_length=max_length))

    labelled = dataset.rename_column(LABEL_COLUMN, "labels")
    return labelled.map(encode, batched=True, remove_columns=text_columns, desc=f"tokenizing {spec.name}")


def from_hf_layout(dataset: datasets.Dataset, task: str | GlueTask) -> datasets.Dataset:
    """Bring a split in the hub's columns (``premise``, ``question1``, ``label``, ``idx``, ...) to our schema."""
    spec = task_spec(task)
    missing = [name for name in (*spec.hf_text_columns, HF_LABEL_COLUMN) if name not in dataset.column_names]
    if missing:
        raise ValueError(f"{spec.name} split lacks the hub columns {missing} (it has {dataset.column_names})")
    selected = dataset.select_columns([*spec.hf_text_columns, HF_LABEL_COLUMN])
    renamed = selected.rename_columns(dict(zip(spec.hf_text_columns, TEXT_COLUMNS)))
    if spec.is_regression or spec.hf_labels == spec.labels:
        return renamed.cast(spec.features())
    order = _hub_to_glue_order(spec)
    return renamed.map(
        lambda batch: {LABEL_COLUMN: [order[label] for label in batch[LABEL_COLUMN]]},
        batched=True,
        features=spec.features(),
        desc=f"reordering {spec.name} labels",
    )


# ---------------------------------------------------------------------------------------------------
# Reading TSV files
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Where the text and label fields of one file are, and how to read them."""

    name: str  # GLUE_LAYOUT or HF_LAYOUT
    text_positions: tuple[int, ...]
    label_position: int
    has_header: bool

    @property
    def min_fields(self) -> int:
        return max(*self.text_positions, self.label_position) + 1


def read_glue_tsv(path: str | Path, task: str | GlueTask) -> datasets.Dataset:
    """Read one GLUE TSV file (GLUE or Hugging Face layout) into a ``datasets.Dataset``."""
    spec = task_spec(task)
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise GlueFormatError(f"{path}: the file is empty")
    layout = _detect_layout(rows[0][1], spec, path)
    body = rows[1:] if layout.has_header else rows
    if not body:
        raise GlueFormatError(f"{path}: a header and no rows: the {spec.name} file holds no examples (an interrupted "
                              "download or export?); write its rows or point --data_dir at a complete GLUE folder")
    columns: dict[str, list] = {name: [] for name in spec.output_columns}
    for line_number, fields in body:
        texts, label = _parse_row(fields, layout, spec, f"{path}:{line_number}")
        for name, text in zip(TEXT_COLUMNS, texts):
            columns[name].append(text)
        columns[LABEL_COLUMN].append(label)
    return datasets.Dataset.from_dict(columns, features=spec.features())


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-empty line; quotes are plain characters, a BOM is dropped."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(reader.line_num, fields) for fields in reader if fields]


def _detect_layout(first_row: list[str], spec: GlueTask, path: Path) -> _Layout:
    """GLUE or Hugging Face layout, from the header (CoLA's GLUE files have none)."""
    header = [name.strip() for name in first_row]
    hf_columns = (*spec.hf_text_columns, HF_LABEL_COLUMN)
    glue_columns = (*spec.text_columns, spec.label_column)
    if HF_INDEX_COLUMN in header and _has_all(header, hf_columns):
        return _named_layout(HF_LAYOUT, header, hf_columns)
    if spec.has_header and _has_all(header, glue_columns):
        return _named_layout(GLUE_LAYOUT, header, glue_columns)
    if _has_all(header, hf_columns):
        return _named_layout(HF_LAYOUT, header, hf_columns)
    if not spec.has_header:
        return _Layout(GLUE_LAYOUT, tuple(spec.text_columns), int(spec.label_column), has_header=False)
    raise GlueFormatError(
        f"{path}:1: header {header} fits neither GLUE layout for {spec.name}: expected the columns "
        f"{list(glue_columns)} (GLUE) or {list(hf_columns)} (Hugging Face). Is this the right task's file?"
    )


def _has_all(header: list[str], names: tuple[ColumnRef, ...]) -> bool:
    return all(name in header for name in names)


def _named_layout(name: str, header: list[str], columns: tuple[ColumnRef, ...]) -> _Layout:
    *text, label = (header.index(column) for column in columns)
    return _Layout(name, tuple(text), label, has_header=True)


def _parse_row(fields: list[str], layout: _Layout, spec: GlueTask, where: str) -> tuple[list[str], Any]:
    if len(fields) < layout.min_fields:
        raise GlueFormatError(
            f"{where}: {len(fields)} tab-separated fields, {spec.name} ({layout.name} layout) needs at "
            f"least {layout.min_fields}: {_preview(fields)}"
        )
    texts = [fields[position] for position in layout.text_positions]
    if layout.name == HF_LAYOUT:
        texts = [unquote_csv_field(text) for text in texts]
    return texts, parse_label(fields[layout.label_position], spec, where)


def _preview(fields: list[str], width: int = 120) -> str:
    text = "\\t".join(fields)
    return repr(text if len(text) <= width else text[:width] + "...")


def unquote_csv_field(text: str) -> str:
    """``"say ""hi"" now"`` -> ``say "hi" now``; any text that is not one well-formed quoted field is returned as is."""
    if len(text) < 2 or text[0] != CSV_QUOTE or text[-1] != CSV_QUOTE:
        return text
    inner = text[1:-1]
    if CSV_QUOTE in inner.replace(CSV_QUOTE * 2, ""):
        return text  # a lone quote inside: not a CSV-quoted field
    return inner.replace(CSV_QUOTE * 2, CSV_QUOTE)


def parse_label(value: str, task: str | GlueTask, where: str = "label") -> int | float:
    """A class index into ``task.labels`` (or a float score for STS-B) from a label field.

    A label name of the GLUE layout (``entailment``, ``0``) maps to its position in ``task.labels``;
    an integer of the Hugging Face layout is a position in ``task.hf_labels`` and is mapped to the
    same label's position in ``task.labels`` (they differ for MNLI only).
    """
    spec = task_spec(task)
    value = value.strip()
    if spec.is_regression:
        return _parse_score(value, spec, where)
    if value in spec.labels:
        return spec.labels.index(value)
    hub_index = _as_int(value)
    if hub_index is not None and 0 <= hub_index < len(spec.hf_labels):
        return spec.labels.index(spec.hf_labels[hub_index])
    unlabelled = " (an unlabelled test split? only train and dev files carry labels)" if value in ("-1", "") else ""
    raise GlueFormatError(
        f"{where}: label {value!r} is not one of {list(spec.labels)} (GLUE layout) nor an index "
        f"0..{len(spec.hf_labels) - 1} (Hugging Face layout) for {spec.name}{unlabelled}"
    )


def _parse_score(value: str, spec: GlueTask, where: str) -> float:
    try:
        score = float(value)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        raise GlueFormatError(f"{where}: {spec.name} score {value!r} is not a finite number")
    return score


def _as_int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def _hub_to_glue_order(spec: GlueTask) -> list[int]:
    return [spec.labels.index(name) for name in spec.hf_labels]


# ---------------------------------------------------------------------------------------------------
# The hub
# ---------------------------------------------------------------------------------------------------


def _load_from_hub(spec: GlueTask, split: str) -> datasets.Dataset:
    hub_split = spec.hub_split(split)
    try:
        dataset = datasets.load_dataset(spec.hub_name, spec.hub_config, split=hub_split)
    except Exception as error:  # no network, no cache, renamed hub repo, ...: all need the same fix
        raise RuntimeError(
            f"could not load GLUE {spec.name} ({spec.hub_name}/{spec.hub_config}, split {hub_split}) from "
            f"the Hugging Face hub: {type(error).__name__}: {error}. Without access to the hub, pass "
            f"--data_dir pointing at a GLUE folder that holds {spec.folder}/{spec.file_name(split)}."
        ) from error
    return from_hf_layout(dataset, spec)
