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

import re
from pathlib import Path
from typing import Any

import datasets

from .glue_tasks import (  # noqa: F401  (re-exported: the public names of the tasks)
    ColumnRef, SPLITS, SPLIT_ALIASES, TEXT_COLUMNS, LABEL_COLUMN, HF_LABEL_COLUMN, HF_INDEX_COLUMN,
    GLUE_LAYOUT, HF_LAYOUT, CSV_QUOTE, GlueFormatError, GlueTask, BINARY, NLI_BINARY, GLUE_TASKS, _TASKS_BY_ALIAS,
    _normalized, task_spec,
    check_split)
from .glue_tsv import _hub_to_glue_order, parse_label, read_glue_tsv, unquote_csv_field  # noqa: F401



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

