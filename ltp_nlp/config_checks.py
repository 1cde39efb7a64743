"""Checks of the LTP settings, one pure function per kind of value.

:data:`FIELD_CHECKS` maps every LTP setting (the fields of :class:`~ltp_nlp.LTPConfig` and the
training-stage knobs the tools and :class:`~ltp_nlp.trainer.LTPTrainingArguments` pass around) to a
function that returns the value, normalised (``int`` thresholds become ``float``), or raises
``ValueError`` naming the field, the value and what is allowed. (The soft-mask temperature is checked
by the trainer and the tools, not here: ``temperature`` is also a generation field of every config.) ``LTPConfig`` runs them on every
assignment, so a bad value fails at construction, at ``from_pretrained(path, field=value)`` and when a
hand-edited ``config.json`` is read; the command-line tools run them on their flags before loading
anything.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

HOST_TYPES = ("bert", "roberta", "ibert")
SCORING_MODES = ("mean", "mean_norm")
MASKING_MODES = ("soft", "hard")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def finite(name: str, value: Any) -> float:
    """A finite real number."""
    number = _number(name, value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def non_negative(name: str, value: Any) -> float:
    """A finite real number >= 0."""
    number = _number(name, value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def positive(name: str, value: Any) -> float:
    """A finite real number > 0."""
    number = _number(name, value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def fraction(name: str, value: Any) -> float:
    """A real number in (0, 1]."""
    number = _number(name, value)
    if not 0 < number <= 1:  # NaN fails both comparisons
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return number


def positive_int(name: str, value: Any) -> int:
    """A whole number >= 1 (``128`` or ``128.0``, not ``12.5``, ``True`` or ``"128"``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def one_of(allowed: tuple[str, ...] | dict, *, optional: bool = False) -> Callable[[str, Any], Any]:
    """A check that the value is one of ``allowed`` (or ``None`` when ``optional``)."""
    names = tuple(allowed)

    def check(name: str, value: Any) -> Any:
        if value is None and optional:
            return value
        if not isinstance(value, str) or value not in names:
            also = " (or null: read from the weights)" if optional else ""
            raise ValueError(f"{name} must be one of {', '.join(names)}{also}, got {value!r}")
        return value

    return check


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def field_checks(prune_modes: tuple[str, ...] | dict) -> dict[str, Callable[[str, Any], Any]]:
    """The check of every LTP setting, given the prune modes (defined with the configuration)."""
    return {
        "host_type": one_of(HOST_TYPES, optional=True),
        "prune_mode": one_of(prune_modes),
        "scoring_mode": one_of(SCORING_MODES),
        "masking_mode": one_of(MASKING_MODES),
        "final_token_threshold": non_negative,
        "token_keep_rate": fraction,
        "score_length": positive_int,          # the fixed maximum length N of "mean" scoring
        "regularise_padding": boolean,
        "approx_factor": positive_int,
        "p_logit": finite,
        "lambda_threshold": non_negative,       # lambda of the LTP regulariser
        "lr_threshold": non_negative,
    }


def check_field(checks: dict[str, Callable[[str, Any], Any]], name: str, value: Any) -> Any:
    """``value`` normalised by the check of ``name``; values of other names pass unchanged."""
    check = checks.get(name)
    return value if check is None else check(name, value)
