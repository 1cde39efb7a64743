"""Which failures are the user's input (exit 2, one line) and which are bugs (a traceback).

:class:`InputError` is what a training run raises for bad input found once work has started (a
corrupt image read by a loader worker, a damaged file the run reads back); everything checked before
work starts raises ``ValueError``. :func:`one_line` recovers the message of an error that a
DataLoader worker re-raised in the training process (torch wraps it into the worker's traceback).
"""
from __future__ import annotations

WORKER_TRACEBACK = "Original Traceback"


class InputError(ValueError):
    """Bad input: the run stops with ``error: <message>`` and exit status 2, on whichever rank found it."""


class BadImage(InputError):
    """An image file that cannot be decoded."""


def one_line(err: BaseException) -> str:
    """The message of ``err``; for an error re-raised from a DataLoader worker, the original message
    (the last line of the worker's traceback, without the exception's class name)."""
    text = str(err)
    if WORKER_TRACEBACK not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    name = type(err).__name__
    for prefix in (f"{type(err).__module__}.{name}: ", f"{name}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last
