"""How many tokens a BERT-family model can read, and clamping a requested maximum length to it.

BERT reads ``max_position_embeddings`` tokens. RoBERTa and I-BERT number positions from
``pad_token_id + 1`` (their embeddings skip the padding index and the positions before it), so they
read ``max_position_embeddings - pad_token_id - 1`` tokens: 512 of 514. A longer input would fail deep
inside the model with a size mismatch; the tools instead truncate to the model's maximum, with a
one-time note, as transformers' tokenizers do with ``truncation=True``.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

OFFSET_HOSTS = ("roberta", "ibert")  # position ids start after the padding index


def model_max_length(config: Any) -> int | None:
    """The longest input ``config``'s model accepts (tokens, special tokens included); ``None`` when the
    configuration does not say (no ``max_position_embeddings``)."""
    def field(name: str):
        return config.get(name) if isinstance(config, dict) else getattr(config, name, None)

    positions = field("max_position_embeddings")
    if not isinstance(positions, int) or isinstance(positions, bool):
        return None
    host = field("host_type") or field("model_type")
    if host in OFFSET_HOSTS:
        pad = field("pad_token_id")
        positions -= (pad if isinstance(pad, int) else 1) + 1
    return positions


def clamp_max_length(requested: int, config: Any, *, flag: str = "--max_seq_length",
                     note: Callable[[str], None] | None = None) -> int:
    """``requested``, or the model's maximum when that is smaller (saying so once through ``note``,
    stderr by default)."""
    limit = model_max_length(config)
    if limit is None or requested <= limit:
        return requested
    message = (f"note: {flag} {requested} is more than the model's {limit} positions: inputs are truncated to "
               f"{limit} tokens")
    (note or (lambda text: print(text, file=sys.stderr)))(message)
    return limit
