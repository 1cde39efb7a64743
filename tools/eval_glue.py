#!/usr/bin/env python
"""Evaluate a GLUE classifier under any prune mode, without training: task metric and FLOPs.

    python tools/eval_glue.py --checkpoint C --task SST2 --data_dir D --prune_mode sttabt_abt --token_keep_rate 0.4
    python tools/eval_glue.py --checkpoint C --task SST2 --data_dir D --prune_mode topk --keep-rates 0.3 0.5 0.7
    python tools/eval_glue.py --checkpoint C --task SST2 --data_dir D --prune_mode absolute_threshold \\
        --final_token_threshold 0.01        # LTP's "manual threshold" baseline (no training)
    python tools/eval_glue.py --checkpoint C --task SST2 --data_dir D --prune_mode none --json

``--checkpoint`` is an LTP checkpoint or a plain BERT / RoBERTa / I-BERT classifier folder (a bare
pretrained encoder, without a classifier head, is refused: fine-tune it first); the prune
settings given on the command line replace the checkpoint's (learned LTP thresholds and STTABT
p-logits are kept when the mode stays; a scout mode needs a checkpoint with a scout, e.g. the output
of tools/distill_scout_glue.py, or ``--init_scout interpolate``). Hard masks, pruned executor (tokens
really removed). Reported: the task metric, ``baseline_gflops`` / ``gflops`` per example (the scout
included; the oracle's dense planning pass counts as its scout), ``relative_flops`` and the share of
tokens entering each layer. On the first ``--check_batches`` batches the masked executor runs too and
the largest difference of their logits is printed: it must be float noise.

A sweep (``--keep-rates`` or ``--thresholds``) gives one row per value; ``--json`` prints one JSON
object: the row itself for one setting, or the common fields with ``rows`` for a sweep. ``--output F``
writes that object to F as well (what ``tools/plot.py --glue`` reads; ``--label`` names the series,
otherwise the plot names it from the prune mode and ``learned``: whether the checkpoint's LTP
thresholds or STTABT p-logits were trained). An existing ``--output`` file is refused unless
``--overwrite_output_dir`` is given; it is written atomically.

Every flag and ``--checkpoint`` (``config.json`` and weights whole, valid LTP settings) is checked
before the model is loaded; a bad one exits with status 2 and one line saying what to do. A
``--max_length`` beyond the model's positions is clamped to them, with a note.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

import ltp_nlp  # noqa: F401  (registers the Auto classes; fixes torchvision first)
from ltp_nlp.cli_checks import check_flags, check_model_folder
from ltp_nlp.configuration_ltp import PRUNE_MODES, SCOUT_MODES
from ltp_nlp.distill import (FRESH_HEAD_SEED, is_bare_encoder, load_checkpoint, load_fresh_head, model_inputs,
                             reconfigure)
from ltp_nlp.flops import FlopsMeter
from ltp_nlp.glue import load_glue, task_spec, tokenize_glue
from ltp_nlp.metrics import compute_metrics
from ltp_nlp.outputs import OVERWRITE_FLAG, check_output_file
from ltp_nlp.positions import clamp_max_length
from ltp_nlp.results import learned
from sttabt.checkpoint import atomic_write

KEEP_MODES = ("topk", "sttabt_abt", "sttabt_abt_oracle")  # the modes --keep-rates sweeps
THRESHOLD_MODES = ("absolute_threshold",)                 # the modes --thresholds sweeps
DEFAULT_CHECK_BATCHES = 2
SWEEP_FLAGS = {"token_keep_rate": ("--keep-rates", "fraction"), "final_token_threshold": ("--thresholds", "non_negative")}


# ---------------------------------------------------------------------------------------------------
# Shared with tools/benchmark_glue.py
# ---------------------------------------------------------------------------------------------------


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --task, --data_dir, the prune settings and the data options."""
    parser.add_argument("--checkpoint", required=True, help="LTP checkpoint or fine-tuned host classifier folder")
    parser.add_argument("--task", required=True, help="GLUE task: SST2, MRPC, RTE, QNLI, MNLI, QQP, STSB, CoLA")
    parser.add_argument("--data_dir", "--data-dir", help="GLUE folder holding <task>/dev.tsv (default: the hub)")
    parser.add_argument("--tokenizer", help="tokenizer name or folder (default: the one saved in --checkpoint)")
    parser.add_argument("--max_length", "--max-length", type=int, default=128)
    parser.add_argument("--max_eval_samples", "--max-eval-samples", "--max-examples", type=int,
                        help="use the first N dev rows")
    g = parser.add_argument_group("prune settings (default: the checkpoint's)")
    g.add_argument("--prune_mode", "--prune-mode", choices=sorted(PRUNE_MODES))
    g.add_argument("--token_keep_rate", "--token-keep-rate", type=float)
    g.add_argument("--final_token_threshold", "--final-token-threshold", type=float)
    g.add_argument("--scoring_mode", "--scoring-mode", choices=["mean", "mean_norm"])
    g.add_argument("--approx_factor", "--approx-factor", type=int)
    g.add_argument("--p_logit", "--p-logit", type=float, help="sttabt_concrete: reset every p-logit to this")
    g.add_argument("--init_scout", "--init-scout", choices=["interpolate"],
                   help="start a missing scout from the host by interpolation (untrained: a lower bound)")


def checked_task(name: str) -> str:
    """The task's canonical name (``ValueError`` for an unknown one)."""
    return task_spec(name).name


def check_checkpoint_args(args: argparse.Namespace) -> None:
    """The flags of :func:`add_checkpoint_args` and ``--checkpoint``'s folder, before anything is loaded."""
    check_flags([("--max_length", "positive_int", args.max_length),
                 ("--max_eval_samples", "positive_int", args.max_eval_samples),
                 ("--token_keep_rate", "fraction", args.token_keep_rate),
                 ("--final_token_threshold", "non_negative", args.final_token_threshold),
                 ("--approx_factor", "positive_int", args.approx_factor), ("--p_logit", "finite", args.p_logit)])
    check_model_folder(args.checkpoint, "--checkpoint")


def prune_settings(args: argparse.Namespace) -> dict:
    names = ("prune_mode", "token_keep_rate", "final_token_threshold", "scoring_mode", "approx_factor", "p_logit")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def load_model(args: argparse.Namespace, *, fresh_head: bool = False, seed: int = FRESH_HEAD_SEED, **extra):
    """The checkpoint under the command line's prune settings, in eval mode; ``args.max_length`` is clamped
    to the model's positions (with a note). A bare pretrained encoder is refused, saying what to do, unless
    ``fresh_head`` (tools/benchmark_glue.py): it then gets a new head for ``args.task``, drawn from ``seed``."""
    if fresh_head and is_bare_encoder(args.checkpoint):
        model = load_fresh_head(args.checkpoint, args.task, seed=seed)
    else:
        model = load_checkpoint(args.checkpoint, init_scout=args.init_scout)
    args.max_length = clamp_max_length(args.max_length, model.config, flag="--max_length")
    return reconfigure(model, init_scout=args.init_scout, **{**prune_settings(args), **extra}).eval()


def load_tokenizer(args: argparse.Namespace):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(args.tokenizer or args.checkpoint)
    except (OSError, ValueError) as err:
        raise ValueError(f"no tokenizer in {args.tokenizer or args.checkpoint} ({err}); "
                         "pass --tokenizer NAME_OR_FOLDER") from None


def dev_batches(args: argparse.Namespace, tokenizer, batch_size: int, *, sort_by_length: bool = True) -> list[dict]:
    """Padded dev batches (the first ``--max_eval_samples`` rows); sorted by length, they hold little padding."""
    from transformers import DataCollatorWithPadding

    dataset = load_glue(args.task, args.data_dir, "dev")
    if args.max_eval_samples is not None:
        dataset = dataset.select(range(min(args.max_eval_samples, len(dataset))))
    encoded = tokenize_glue(dataset, tokenizer, args.task, args.max_length)
    order = list(range(len(encoded)))
    if sort_by_length:
        lengths = [len(ids) for ids in encoded["input_ids"]]
        order.sort(key=lambda i: lengths[i])
    collate = DataCollatorWithPadding(tokenizer)
    return [dict(collate([encoded[i] for i in order[start:start + batch_size]]))
            for start in range(0, len(order), batch_size)]


def flops_meter(model) -> FlopsMeter:
    """The FLOPs meter of ``model``'s encoder, its scout (or the oracle's dense planning pass) included."""
    c = model.config
    meter = FlopsMeter(c.hidden_size, c.intermediate_size, c.num_hidden_layers)
    if c.prune_mode in SCOUT_MODES:
        meter.scout_hidden = c.hidden_size // c.approx_factor
        meter.scout_intermediate = c.intermediate_size // c.approx_factor
    elif c.prune_mode == "sttabt_abt_oracle":
        meter.scout_hidden, meter.scout_intermediate = c.hidden_size, c.intermediate_size
    return meter


def pruned_logits(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, counts) of the hard-mask pruned executor."""
    ids, mask, types = model_inputs(batch)
    out = model(ids, mask, types, masking_mode="hard", executor="pruned")
    return out.logits, out.counts


# ---------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------


@torch.inference_mode()
def evaluate(model, batches: list[dict], task: str, *, check_batches: int = DEFAULT_CHECK_BATCHES) -> dict:
    """Task metrics, FLOPs and kept tokens of ``model`` (hard masks, pruned executor) on ``batches``;
    ``max_abs_diff_pruned_masked`` over the first ``check_batches`` batches."""
    meter = flops_meter(model)
    logits, labels, diff = [], [], 0.0
    for index, batch in enumerate(batches):
        out, counts = pruned_logits(model, batch)
        meter.update(counts, batch["attention_mask"].sum(-1))
        if index < check_batches:
            ids, mask, types = model_inputs(batch)
            masked = model(ids, mask, types, masking_mode="hard", executor="masked").logits
            diff = max(diff, float((out - masked).abs().max()))
        logits.append(out.float())
        labels.append(batch["labels"])
    metrics = compute_metrics(task, torch.cat(logits), torch.cat(labels))
    c = model.config
    setting = {"prune_mode": c.prune_mode, "learned": learned(model)}
    if c.prune_mode in KEEP_MODES:
        setting["token_keep_rate"] = c.token_keep_rate
    if c.prune_mode in THRESHOLD_MODES:
        setting.update(final_token_threshold=c.final_token_threshold, scoring_mode=c.scoring_mode)
    if c.prune_mode in SCOUT_MODES:
        setting["approx_factor"] = c.approx_factor
    return {**setting, **metrics, **meter.summary(), "max_abs_diff_pruned_masked": diff,
            "checked_batches": min(check_batches, len(batches))}


def sweep(args: argparse.Namespace) -> tuple[str, list[float]] | None:
    """(setting, values) of a sweep, or None."""
    if args.keep_rates and args.thresholds:
        raise ValueError("sweep --keep-rates or --thresholds, not both")
    if args.keep_rates:
        return "token_keep_rate", args.keep_rates
    if args.thresholds:
        return "final_token_threshold", args.thresholds
    return None


def format_table(rows: list[dict], metric: str) -> str:
    head = (f"{'prune_mode':<20}{'keep':>7}{'thresh':>9}{metric:>22}{'rel_flops':>11}{'gflops':>9}{'kept':>7}"
            f"{'max_diff':>10}")
    lines = [head]
    for r in rows:
        keep = f"{r['token_keep_rate']:.3g}" if "token_keep_rate" in r else "-"
        thresh = f"{r['final_token_threshold']:.3g}" if "final_token_threshold" in r else "-"
        lines.append(f"{r['prune_mode']:<20}{keep:>7}{thresh:>9}{r[metric]:>22.4f}{r['relative_flops']:>11.3f}"
                     f"{r['gflops']:>9.4g}{r['kept_mean']:>7.3f}{r['max_abs_diff_pruned_masked']:>10.1e}")
    for r in rows:
        per_layer = " ".join(f"{k:.2f}" for k in r["kept_per_layer"])
        lines.append(f"kept per layer ({r['prune_mode']}, keep {r.get('token_keep_rate', '-')}, "
                     f"threshold {r.get('final_token_threshold', '-')}): {per_layer}")
    return "\n".join(lines)


def prepare(args: argparse.Namespace) -> tuple[str, tuple[str, list[float]] | None, object, list[dict]]:
    """(task, sweep, model, dev batches) after every check; ``ValueError`` / ``OSError`` say what is wrong."""
    task = checked_task(args.task)
    values = sweep(args)
    check_flags([("--batch_size", "positive_int", args.batch_size), ("--threads", "positive_int", args.threads),
                 ("--check_batches", "non_negative", args.check_batches)])
    if values is not None:
        flag, kind = SWEEP_FLAGS[values[0]]
        check_flags((flag, kind, value) for value in values[1])
    check_checkpoint_args(args)
    if args.output:
        check_output_file(args.output, overwrite=args.overwrite_output_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args)
    if values is not None:
        name = values[0]
        allowed = KEEP_MODES if name == "token_keep_rate" else THRESHOLD_MODES
        if model.config.prune_mode not in allowed:
            raise ValueError(f"sweeping {name} needs --prune_mode {' or '.join(allowed)}, "
                             f"not {model.config.prune_mode!r}")
    return task, values, model, dev_batches(args, load_tokenizer(args), args.batch_size)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(parser)
    parser.add_argument("--keep-rates", "--keep_rates", type=float, nargs="+", help="sweep token_keep_rate")
    parser.add_argument("--thresholds", type=float, nargs="+", help="sweep final_token_threshold")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=32)
    parser.add_argument("--check_batches", "--check-batches", type=int, default=DEFAULT_CHECK_BATCHES,
                        help="batches on which the masked executor checks the pruned one")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--output", "-o", help="also write the JSON object to this file (read by tools/plot.py --glue)")
    parser.add_argument("--label", help="series name for tools/plot.py (default: from the prune mode)")
    parser.add_argument(OVERWRITE_FLAG, "--overwrite-output-dir", dest="overwrite_output_dir", action="store_true",
                        help="replace an existing --output file (default: refuse)")
    args = parser.parse_args(argv)
    try:
        task, values, model, batches = prepare(args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if values is None:
        rows = [evaluate(model, batches, task, check_batches=args.check_batches)]
    else:
        name = values[0]
        rows = [evaluate(reconfigure(model, **{name: point}).eval(), batches, task, check_batches=args.check_batches)
                for point in values[1]]
    common = {"checkpoint": str(args.checkpoint), "task": task, "examples": sum(len(b["labels"]) for b in batches),
              "host_type": model.config.host_type}
    if args.label:
        common["method"] = args.label
    metric = task_spec(task).metric
    result = {**common, **rows[0]} if values is None else {**common, "rows": rows}
    if args.output:
        atomic_write(args.output, lambda f: f.write(json.dumps(result, indent=2) + "\n"), mode="w")
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{task} dev, {common['examples']} examples, {args.checkpoint} ({common['host_type']}), "
          "hard masks, pruned executor")
    print(format_table(rows, metric))
    if args.output:
        print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
