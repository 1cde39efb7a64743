#!/usr/bin/env python
"""Turn a fine-tuned BERT / RoBERTa / I-BERT checkpoint folder into an LTP one, in place.

    python tools/convert_to_ltp.py OUT --prune_mode absolute_threshold --final_token_threshold 0.01 \\
        --scoring_mode mean [--token_keep_rate R] [--p_logit V]

This is the reference's manual edit of ``OUT/config.json``: ``architectures: ["LTPForSequenceClassification"]``,
``model_type: "ltp"``, ``host_type`` (the old ``model_type``) and the prune fields; ``trainer_state.json``
is removed (a later run must not resume the fine-tuning's trainer state). The weights are untouched:
after ``import ltp_nlp`` the folder loads with ``AutoModelForSequenceClassification.from_pretrained``
and, with ``prune_mode none``, gives the dense model's logits. A folder that is already an LTP one
keeps its ``host_type`` and gets the new prune fields. The new config is validated, then written
atomically (temporary file + rename).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ltp_nlp  # noqa: F401  (registers LTPConfig)
from sttabt.checkpoint import atomic_write
from ltp_nlp.configuration_ltp import HOST_TYPES, PRUNE_MODES, SCORING_MODES, LTPConfig

CONFIG_NAME = "config.json"
TRAINER_STATE = "trainer_state.json"
LTP_MODEL_TYPE = "ltp"
LTP_ARCHITECTURE = "LTPForSequenceClassification"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="fine-tuned checkpoint folder (config.json + weights), edited in place")
    parser.add_argument("--prune_mode", default="absolute_threshold", choices=sorted(PRUNE_MODES))
    parser.add_argument("--final_token_threshold", type=float, default=0.01,
                        help="LTP threshold scale: layer i of L starts at final * i / L (default 0.01)")
    parser.add_argument("--scoring_mode", default="mean", choices=SCORING_MODES)
    parser.add_argument("--token_keep_rate", type=float,
                        help="last-layer keep rate of topk (keep ratio of sttabt_abt*)")
    parser.add_argument("--p_logit", type=float, help="initial p-logit of sttabt_concrete")
    return parser


def converted(config: dict, args: argparse.Namespace, where: Path) -> dict:
    """The LTP version of a host ``config.json``; ``ValueError`` for a host LTP cannot run."""
    model_type = config.get("model_type")
    if model_type == LTP_MODEL_TYPE:
        host_type = config.get("host_type")
    elif model_type in HOST_TYPES:
        host_type = model_type
    else:
        raise ValueError(f"{where} is a {model_type!r} checkpoint; LTP runs on {', '.join(HOST_TYPES)} hosts")
    new = {**config, "architectures": [LTP_ARCHITECTURE], "model_type": LTP_MODEL_TYPE, "host_type": host_type,
           "prune_mode": args.prune_mode, "final_token_threshold": args.final_token_threshold,
           "scoring_mode": args.scoring_mode}
    if args.token_keep_rate is not None:
        new["token_keep_rate"] = args.token_keep_rate
    if args.p_logit is not None:
        new["p_logit"] = args.p_logit
    LTPConfig(**{k: v for k, v in new.items() if k != "model_type"})  # validates the prune fields and the host
    return new


def convert(folder: str | Path, args: argparse.Namespace) -> dict:
    """Convert ``folder`` in place; returns the new configuration."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{folder} has no {CONFIG_NAME}: pass the folder of a fine-tuned checkpoint "
                         "(tools/run_glue.py writes one)" + ("" if folder.is_dir() else "; the folder does not exist"))
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    new = converted(config, args, folder)
    text = json.dumps(new, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")
    (folder / TRAINER_STATE).unlink(missing_ok=True)
    return new


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        new = convert(args.folder, args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    fields = ", ".join(f"{k}={new[k]}" for k in ("host_type", "prune_mode", "final_token_threshold", "scoring_mode",
                                                  "token_keep_rate", "p_logit") if k in new)
    print(f"converted {Path(args.folder) / CONFIG_NAME}: {fields}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
