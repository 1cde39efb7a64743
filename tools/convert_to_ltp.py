#!/usr/bin/env python
"""Turn a fine-tuned BERT / RoBERTa / I-BERT checkpoint folder into an LTP one, in place.

    python tools/convert_to_ltp.py OUT --prune_mode absolute_threshold --final_token_threshold 0.01 \\
        --scoring_mode mean [--token_keep_rate R] [--p_logit V]

This is the reference's manual edit of ``OUT/config.json``: ``architectures: ["LTPForSequenceClassification"]``,
``model_type: "ltp"``, ``host_type`` (the old ``model_type``) and the prune fields. The weights are
untouched: after ``import ltp_nlp`` the folder loads with ``AutoModelForSequenceClassification.from_pretrained``
and, with ``prune_mode none``, gives the dense model's logits. The new config is validated, then
written atomically (temporary file + rename).

Nothing is lost: in place, the host's ``config.json`` is kept as ``host_config.json`` and its
``trainer_state.json`` is renamed ``host_trainer_state.json`` (so no later run takes the fine-tuning's
trainer state for its own). A folder that is already an LTP one keeps its ``host_type``; giving it other
prune fields is refused (exit 2) unless ``--overwrite_output_dir`` is passed, since its learned
thresholds may belong to the old ones. ``--output_dir NEW`` writes a converted copy of the folder's
files (not its ``checkpoint-*`` folders) to NEW instead, refusing a non-empty NEW unless
``--overwrite_output_dir``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import ltp_nlp  # noqa: F401  (registers LTPConfig)
from sttabt.checkpoint import atomic_write
from ltp_nlp.configuration_ltp import HOST_TYPES, PRUNE_MODES, SCORING_MODES, LTPConfig
from ltp_nlp.distill import check_classifier
from ltp_nlp.outputs import OVERWRITE_FLAG, check_output_dir, check_output_file, save_atomically

CONFIG_NAME = "config.json"
TRAINER_STATE = "trainer_state.json"
HOST_CONFIG = "host_config.json"              # the host's config.json, kept by an in-place conversion
HOST_TRAINER_STATE = "host_trainer_state.json"
PRUNE_FIELDS = ("prune_mode", "final_token_threshold", "scoring_mode", "token_keep_rate", "p_logit")
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
    parser.add_argument("--output_dir", help="write a converted copy here (default: convert FOLDER in place)")
    parser.add_argument(OVERWRITE_FLAG, action="store_true",
                        help="re-convert an LTP folder in place, or replace a non-empty --output_dir")
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


def read_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{folder} has no {CONFIG_NAME}: pass the folder of a fine-tuned checkpoint "
                         "(tools/run_glue.py writes one)" + ("" if folder.is_dir() else "; the folder does not exist"))
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}; empty or truncated?)") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}, not a configuration object")
    return config


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def _copy_converted(folder: Path, output: Path, text: str) -> None:
    """The files of ``folder`` (not its sub-folders nor its trainer state) with the new config, into ``output``."""
    def write(scratch: str) -> None:
        for path in folder.iterdir():
            if path.is_file() and path.name not in (CONFIG_NAME, TRAINER_STATE):
                shutil.copy2(path, os.path.join(scratch, path.name))
        Path(scratch, CONFIG_NAME).write_text(text, encoding="utf-8")

    save_atomically(write, output)


def convert(folder: str | Path, args: argparse.Namespace) -> dict:
    """Convert ``folder`` in place, or into ``args.output_dir``; returns the new configuration."""
    folder = Path(folder)
    config = read_config(folder)
    new = converted(config, args, folder)
    check_classifier(folder)  # an LTP checkpoint is made from a fine-tuned classifier
    text = json.dumps(new, indent=2, sort_keys=True) + "\n"
    overwrite = getattr(args, "overwrite_output_dir", False)
    output = getattr(args, "output_dir", None)
    if output is not None:
        check_output_dir(output, overwrite=overwrite)
        _copy_converted(folder, Path(output), text)
        return new
    if config.get("model_type") == LTP_MODEL_TYPE:
        changed = [k for k in PRUNE_FIELDS if k in new and config.get(k) != new[k]]
        if changed and not overwrite:
            raise ValueError(f"{folder} is already an LTP checkpoint; converting it again replaces "
                             f"{', '.join(f'{k}={config.get(k)}' for k in changed)} (its learned state may belong to "
                             f"them): pass {OVERWRITE_FLAG} to do so in place, or --output_dir NEW for a converted copy")
    else:
        for name in (HOST_CONFIG, HOST_TRAINER_STATE):
            check_output_file(folder / name, overwrite=overwrite, flag="the backup")
        _write_text(folder / HOST_CONFIG, (folder / CONFIG_NAME).read_text(encoding="utf-8"))
    _write_text(folder / CONFIG_NAME, text)
    if (folder / TRAINER_STATE).is_file():
        os.replace(folder / TRAINER_STATE, folder / HOST_TRAINER_STATE)
    return new


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        new = convert(args.folder, args)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    fields = ", ".join(f"{k}={new[k]}" for k in ("host_type", "prune_mode", "final_token_threshold", "scoring_mode",
                                                  "token_keep_rate", "p_logit") if k in new)
    where = Path(args.output_dir) / CONFIG_NAME if args.output_dir else Path(args.folder) / CONFIG_NAME
    print(f"converted {where}: {fields}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
