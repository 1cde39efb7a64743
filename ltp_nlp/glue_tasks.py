"""GLUE tasks: names, folders, columns and label lists of the nine tasks (:func:`task_spec`)."""
from __future__ import annotations

import re
from dataclasses import dataclass
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

