#!/usr/bin/env python
"""Measured CPU throughput of dense vs pruned inference on real GLUE sentences, timed side by side.

    python tools/benchmark_glue.py --checkpoint C --task SST2 --data_dir D --batch-size 32 --repeats 5 --threads 8
    python tools/benchmark_glue.py --checkpoint C --task SST2 --data_dir D --prune_mode topk --token_keep_rate 0.3

The dense model is the host's own transformers classifier (``BertForSequenceClassification``, ...,
with the checkpoint's weights and transformers' default attention): what a user would run. The
pruned model is the LTP model under the checkpoint's prune settings (or those given on the command
line, as in tools/eval_glue.py), hard masks, pruned executor (tokens really removed). Both run on
the same batches of the first ``--max-examples`` dev sentences, **sorted by length** by default
(little padding, so the dense model is not handicapped by padding the pruned one skips;
``--no-sort`` keeps the dataset order). One untimed pass scores both models (and warms them up),
then ``--repeats`` passes time them alternately, batch by batch (dense, pruned, dense, ...), so both
see the same machine state; each reports examples / median of the per-repeat totals.

``ideal_speedup`` = 1 / ``relative_flops`` (the scout included), ``share_of_ideal`` = measured speedup /
ideal speedup: how much of the FLOPs saved became time. Key names follow tools/benchmark.py. With
``--json`` an STTABT mode's pruned forward is also timed in its three stages, chained batch by batch
in the same alternating rounds: ``scout_s`` (the attention the pruner reads), ``plan_s`` (the pruner
on it) and ``host_s`` (embedding, pruned encoder under that plan, head), with ``dense_s``: medians of
the per-repeat totals, in seconds.

``--checkpoint`` may also be a bare pretrained encoder (no classifier head, e.g. sentence-transformers'
MiniLM): it gets a new head for ``--task``, drawn from ``--seed``, as tools/run_glue.py starts
fine-tuning. A note says so and ``head`` is ``"fresh"`` (else ``"checkpoint"``): the speeds are real,
the scores are chance. tools/eval_glue.py refuses such a folder.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from eval_glue import (add_checkpoint_args, check_checkpoint_args, checked_task, dev_batches,  # noqa: E402
                       flops_meter, load_model, load_tokenizer, pruned_logits)
from ltp_nlp.cli_checks import check_flags  # noqa: E402
from ltp_nlp.configuration_ltp import PLANNED_MODES  # noqa: E402
from ltp_nlp.distill import FRESH_HEAD_SEED, PRUNER_KEY, SCOUT_KEY, is_bare_encoder, model_inputs  # noqa: E402
from ltp_nlp.executors import run_planned_pruned  # noqa: E402
from ltp_nlp.glue import task_spec  # noqa: E402
from ltp_nlp.host import SEQUENCE_CLASSIFIERS, embed  # noqa: E402
from ltp_nlp.metrics import compute_metrics  # noqa: E402
from sttabt.timing import device_name, per_second  # noqa: E402

DEFAULT_MAX_EXAMPLES = 512


def dense_host(model) -> torch.nn.Module:
    """The host's own transformers sequence classifier with ``model``'s weights, in eval mode."""
    host = SEQUENCE_CLASSIFIERS[model.config.host_type](model.config.host_config())
    state = {k: v for k, v in model.state_dict().items() if PRUNER_KEY not in k and SCOUT_KEY not in k}
    host.load_state_dict(state, strict=True)
    return host.eval()


def stage_calls(model) -> dict:
    """The pruned forward of an STTABT mode as three calls chained on a batch, each taking the batch
    and the previous stage's result: ``scout`` (the attention the pruner reads), ``plan`` (the pruner
    on it, hard masks) and ``host`` (the embedding, the pruned encoder under the plan, the head: the
    pruned model's logits). Call inside ``torch.inference_mode()``."""
    ltp = model.ltp

    def scout(batch, _):
        ids, mask, types = model_inputs(batch)
        return ltp.planning_attention(ids, mask.bool(), types)

    def plan(batch, attention):
        return ltp.pruner.plan(attention, hard=True, budget="per_sample", valid=batch["attention_mask"].bool())

    def host(batch, masks):
        ids, _, types = model_inputs(batch)
        return model.head(run_planned_pruned(ltp.layers, embed(ltp.embeddings, ids, types), masks).hidden)

    return {"scout": scout, "plan": plan, "host": host}


def run_stages(stages: dict, batch: dict, total: dict | None = None):
    """The chained ``stages`` on ``batch``; their seconds are added to ``total``. Returns the last result."""
    carried = None
    for name, fn in stages.items():
        start = time.perf_counter()
        carried = fn(batch, carried)
        if total is not None:
            total[name] += time.perf_counter() - start
    return carried


@torch.inference_mode()
def benchmark(model, dense, batches: list[dict], task: str, *, repeats: int = 5, warmup: int = 1,
              stages: bool = False) -> dict:
    """Scores, FLOPs and median throughput of the dense host and the pruned model on ``batches``;
    ``stages`` (STTABT modes): also the median seconds of the pruned forward's stages
    (:func:`stage_calls`) and of the dense pass."""
    meter = flops_meter(model)
    dense_logits, pruned_out, labels = [], [], []

    def run_dense(batch):
        ids, mask, types = model_inputs(batch)
        return dense(input_ids=ids, attention_mask=mask, token_type_ids=types).logits

    runs = {"dense": run_dense, "pruned": lambda batch: pruned_logits(model, batch)}
    chain = stage_calls(model) if stages and model.config.prune_mode in PLANNED_MODES else {}
    for batch in batches:  # the scoring pass: also the first warm-up
        dense_logits.append(runs["dense"](batch).float())
        logits, counts = runs["pruned"](batch)
        pruned_out.append(logits.float())
        meter.update(counts, batch["attention_mask"].sum(-1))
        labels.append(batch["labels"])
        run_stages(chain, batch)
    for _ in range(warmup - 1):
        for batch in batches:
            for fn in runs.values():
                fn(batch)
            run_stages(chain, batch)
    times = {name: [] for name in (*runs, *chain)}
    for _ in range(repeats):
        total = dict.fromkeys(times, 0.0)
        for batch in batches:
            for name, fn in runs.items():
                start = time.perf_counter()
                fn(batch)
                total[name] += time.perf_counter() - start
            run_stages(chain, batch, total)
        for name in times:
            times[name].append(total[name])
    examples = sum(len(b["labels"]) for b in batches)
    labels = torch.cat(labels)
    dense_logits, pruned_out = torch.cat(dense_logits), torch.cat(pruned_out)
    flops = meter.summary()
    dense_ex_s = per_second(examples, times["dense"])
    pruned_ex_s = per_second(examples, times["pruned"])
    speedup = pruned_ex_s / dense_ex_s
    ideal = 1 / flops["relative_flops"]
    spec = task_spec(task)
    result = {
        "dense_ex_s": dense_ex_s, "pruned_ex_s": pruned_ex_s, "speedup": speedup, "ideal_speedup": ideal,
        "share_of_ideal": speedup / ideal, "metric": spec.metric,
        "dense_score": compute_metrics(task, dense_logits, labels)["score"],
        "pruned_score": compute_metrics(task, pruned_out, labels)["score"],
    }
    if not spec.is_regression:
        dense_pred, pruned_pred = dense_logits.argmax(-1), pruned_out.argmax(-1)
        result.update(dense_accuracy=float((dense_pred == labels).float().mean()),
                      pruned_accuracy=float((pruned_pred == labels).float().mean()),
                      agreement=float((dense_pred == pruned_pred).float().mean()))
    breakdown = {f"{name}_s": statistics.median(times[name]) for name in ("scout", "plan", "host", "dense")
                 } if chain else {}
    return {**result, **breakdown, **{k: flops[k] for k in ("baseline_gflops", "gflops", "scout_gflops",
                                                             "relative_flops", "kept_mean", "kept_per_layer")},
            "examples": examples, "dense_ms": [t * 1e3 for t in times["dense"]],
            "pruned_ms": [t * 1e3 for t in times["pruned"]]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(parser)
    parser.set_defaults(max_eval_samples=DEFAULT_MAX_EXAMPLES)
    parser.add_argument("--batch-size", "--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the examples (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes (>= 1: the first scores both models)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--no-sort", "--no_sort", action="store_true", help="keep the dataset order (default: "
                        "batches of length-sorted sentences)")
    parser.add_argument("--seed", type=int, default=FRESH_HEAD_SEED, help="seed of the new head given to a bare "
                        f"pretrained encoder (default {FRESH_HEAD_SEED})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        check_flags([("--repeats", "positive_int", args.repeats), ("--warmup", "positive_int", args.warmup),
                     ("--batch-size", "positive_int", args.batch_size), ("--threads", "positive_int", args.threads)])
        task = checked_task(args.task)
        check_checkpoint_args(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        fresh = is_bare_encoder(args.checkpoint)
        if fresh:
            print(f"note: {args.checkpoint} is a bare pretrained encoder: it gets a new, untrained classifier head "
                  f"for {task} (seed {args.seed}), so the scores are chance; the speeds are real", file=sys.stderr)
        model = load_model(args, fresh_head=fresh, seed=args.seed)
        dense = dense_host(model)
        batches = dev_batches(args, load_tokenizer(args), args.batch_size, sort_by_length=not args.no_sort)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    c = model.config
    result = {"checkpoint": str(args.checkpoint), "task": task, "host_type": c.host_type, "prune_mode": c.prune_mode,
              "token_keep_rate": c.token_keep_rate, "final_token_threshold": c.final_token_threshold,
              "batch_size": args.batch_size, "batches": "dataset order" if args.no_sort else "length-sorted",
              "dense_attention": dense.config._attn_implementation, "device": device_name(torch.device("cpu")),
              "torch": torch.__version__, "head": "fresh" if fresh else "checkpoint",
              **benchmark(model, dense, batches, task, repeats=args.repeats, warmup=args.warmup, stages=args.json)}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{task} dev, {result['examples']} examples in {result['batches']} batches of {args.batch_size}, "
          f"{c.host_type} under {c.prune_mode}, {result['device']}"
          + (", fresh untrained head (scores are chance)" if fresh else ""))
    print(f"  dense  {result['dense_ex_s']:9.1f} ex/s   {result['baseline_gflops']:.4g} GFLOPs   "
          f"{result['metric']} {result['dense_score']:.4f}  ({result['dense_attention']} attention)")
    print(f"  pruned {result['pruned_ex_s']:9.1f} ex/s   {result['gflops']:.4g} GFLOPs "
          f"(scout {result['scout_gflops']:.4g})   {result['metric']} {result['pruned_score']:.4f}")
    print(f"  speedup {result['speedup']:.2f}x of ideal {result['ideal_speedup']:.2f}x: "
          f"share_of_ideal {result['share_of_ideal']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
