"""Reading GLUE TSV files in the GLUE or the Hugging Face column layout (see :mod:`ltp_nlp.glue`)."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from .glue_tasks import (
    ColumnRef, TEXT_COLUMNS, LABEL_COLUMN, HF_LABEL_COLUMN, HF_INDEX_COLUMN, GLUE_LAYOUT, HF_LAYOUT,
    CSV_QUOTE, GlueFormatError, GlueTask, task_spec)

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

