#!/usr/bin/env python
"""Throughput of an STTABT model against its dense timm host, timed side by side in one run.

    python tools/benchmark.py --model sttabt_deit_small --keep 0.5 --batch-size 32
    python tools/benchmark.py --model sttabt_deit_small --keep 0.5 --batch-size 256 --device cuda --dtype bfloat16
    python tools/benchmark.py --model deit_small_patch16_224 --keep 0.5       # a dense timm name, wrapped
    python tools/benchmark.py --model sttabt_deit_small --keep 0.5 --runtime onnxruntime
    python tools/benchmark.py --model sttabt_deit_small --keep 0.5 --processes 3   # each model in its own process

Both models share the host's weights. After warm-up, the two are timed alternately (dense, pruned,
dense, ...) so that both see the same machine state; each reports the median of ``--repeats``
timings. ``ideal_speedup`` is dense GFLOPs / pruned GFLOPs with the scout included, and
``share_of_ideal`` = measured speedup / ideal speedup: how much of the FLOPs saved became time.
With ``--json`` the pruned forward is also timed in its three stages (in the same alternating
rounds): ``scout_s`` (the scout's pass, or the host's dense recorded pass for the oracle),
``plan_s`` (the pruner turning that attention into masks), ``host_s`` (the host's pruned pass under
those masks), with ``dense_s``, each the median in seconds.

The pruner: with ``--checkpoint``, the checkpoint's own (trained p-logits, saved keep ratios) unless
``--pruner``, ``--keep`` or ``--p-logit`` ask for another; without one, the flags' pruner, and ABT
top-k at ``--keep 0.5`` when no pruner flag is given. ``--model`` also takes a dense timm name
(``deit_small_patch16_224``, ``lvvit_small``): that dense model is the ``dense`` row, timed as it is,
and the ``pruned`` row is it wrapped with ``sttabt.wrap`` and that pruner.

``--processes ROUNDS`` times each model alone in a fresh process instead, ROUNDS rounds in turn (dense,
pruned, dense, ...), medians of the processes' medians: as a server runs one model, and immune to what
one model leaves in a process (the allocator's state) speeding up or slowing down the other.

``--runtime``: ``eager`` (default) runs both models as they are; ``compile`` runs both through
``torch.compile`` (``--compile-backend``, default inductor) and ``onnxruntime`` exports both to ONNX
(CPU, float32) and times onnxruntime sessions. Both graph runtimes run the pruned model under its
static budget (counts fixed ahead: what a deployment runs; a concrete checkpoint must be calibrated).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import add_model_args, build_model, check_counts, check_device, fail, pruner_report  # noqa: E402
from sttabt.export import Deployable, export_onnx, onnx_session  # noqa: E402
from sttabt.executors import forward_masked, forward_pruned  # noqa: E402
from sttabt.flops import sttabt_flops  # noqa: E402
from sttabt.timing import device_name, per_second, time_alternately  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FLOPS_KEYS = ("ideal_speedup", "dense_gflops", "gflops", "scout_gflops", "keep_mean")
DEFAULT_KEEP = 0.5  # ABT top-k when no pruner flag and no checkpoint are given
RUNTIMES = ("eager", "compile", "onnxruntime")


class _Dense(torch.nn.Module):
    """The host behind a plain ``forward(images)``, for the exporter."""

    def __init__(self, host):
        super().__init__()
        self.host = host

    def forward(self, images):
        return self.host(images)


def runtime_calls(model, images: torch.Tensor, runtime: str, *, backend: str = "inductor",
                  folder: str | None = None) -> dict:
    """``{"dense": f, "pruned": f}``: zero-argument calls running each model in ``runtime`` on ``images``."""
    if runtime == "eager":
        return {"dense": lambda: model.host(images), "pruned": lambda: model(images)}
    if runtime == "compile":
        dense = torch.compile(model.host, backend=backend)
        pruned = torch.compile(Deployable(model), backend=backend, fullgraph=True)
        return {"dense": lambda: dense(images), "pruned": lambda: pruned(images)}
    feed = {"images": images.cpu().numpy()}
    sessions = {name: onnx_session(export_onnx(net, images, os.path.join(folder, f"{name}.onnx")))
                for name, net in (("dense", _Dense(model.host).eval()), ("pruned", Deployable(model).eval()))}
    return {name: (lambda s=s: s.run(None, feed)) for name, s in sessions.items()}


def stage_runs(model, images: torch.Tensor) -> dict:
    """The pruned forward's stages as separate calls: ``scout`` (the pass the plan reads), ``plan``
    (the pruner on that pass's attention) and ``host`` (the pruned host under the plan), each on
    inputs computed once beforehand. Call inside ``torch.inference_mode()``."""
    budget = model.budget or model.pruner.default_budget
    kind = model.pruner.attention
    if model.pruner.source == "actual":
        def scout():
            return forward_masked(model.host, images, attention=kind, scores_only=True)
    else:
        def scout():
            return model.scout(images, attention=kind, scores_only=True)
    seen = scout()
    masks, _ = model.plan(images)
    return {"scout": scout, "plan": lambda: model.pruner.plan(seen.attention, hard=True, budget=budget),
            "host": lambda: forward_pruned(model.host, images, masks)}


def benchmark(model, images: torch.Tensor, *, warmup: int = 3, repeats: int = 10, dtype=torch.float32,
              runtime: str = "eager", backend: str = "inductor", stages: bool = False, only: str | None = None
              ) -> dict:
    """Median images/s of the dense host and of the pruned model on the same batch, in ``runtime``;
    with ``stages`` (eager only) also the median seconds of the pruned forward's stages
    (:func:`stage_runs`) and of the dense pass. ``only`` (``"dense"`` or ``"pruned"``): time that model
    alone (:func:`in_processes`); the result then has its ``seconds`` and the FLOPs."""
    device = images.device
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    budget = "static" if runtime != "eager" else None
    stages = stages and runtime == "eager" and only is None
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode(), autocast:
        runs = runtime_calls(model, images, runtime, backend=backend, folder=folder)
        if only is not None:
            runs = {only: runs[only]}
        if stages:
            runs.update(stage_runs(model, images))
        times = time_alternately(runs, device=device, warmup=warmup, repeats=repeats)
        masks, _ = model.plan(images, budget=budget)
    flops = sttabt_flops(model, masks, executed=True).to_dict()
    flops = {**flops, "ideal_speedup": flops["dense_gflops"] / flops["gflops"]}
    if only is not None:
        return {"only": only, "seconds": statistics.median(times[only]), **flops}
    batch = images.shape[0]
    dense_img_s = per_second(batch, times["dense"])
    pruned_img_s = per_second(batch, times["pruned"])
    speedup = pruned_img_s / dense_img_s
    ideal = flops["ideal_speedup"]
    breakdown = {f"{name}_s": statistics.median(times[name]) for name in ("scout", "plan", "host", "dense")
                 } if stages else {}
    return {
        **breakdown,
        "dense_img_s": dense_img_s, "pruned_img_s": pruned_img_s, "speedup": speedup,
        "ideal_speedup": ideal, "share_of_ideal": speedup / ideal,
        "dense_gflops": flops["dense_gflops"], "gflops": flops["gflops"], "scout_gflops": flops["scout_gflops"],
        "keep_mean": flops["keep_mean"],
        "dense_ms": [t * 1e3 for t in times["dense"]], "pruned_ms": [t * 1e3 for t in times["pruned"]],
    }


def in_processes(argv: list[str], rounds: int, batch: int) -> dict:
    """The two models timed apart, each alone in a fresh process (as a server runs one model), ``rounds``
    times in turn (dense, pruned, dense, ...): what one model leaves behind in a process (its
    allocator's state, caches) cannot speed up or slow down the other. Medians over the rounds of
    each process's median."""
    seconds: dict[str, list[float]] = {"dense": [], "pruned": []}
    for _ in range(rounds):
        for name in seconds:
            command = [sys.executable, os.path.abspath(__file__), *argv, "--processes", "0", "--only", name, "--json"]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                fail(f"the {name} process failed:\n{done.stderr.strip()}")
            child = json.loads(done.stdout.strip().splitlines()[-1])
            seconds[name].append(child["seconds"])
    speedup = statistics.median(seconds["dense"]) / statistics.median(seconds["pruned"])
    return {"isolation": f"one model per process, {rounds} rounds", **{k: child[k] for k in FLOPS_KEYS},
            "dense_img_s": batch / statistics.median(seconds["dense"]),
            "pruned_img_s": batch / statistics.median(seconds["pruned"]), "speedup": speedup,
            "share_of_ideal": speedup / child["ideal_speedup"],
            "dense_ms": [t * 1e3 for t in seconds["dense"]], "pruned_ms": [t * 1e3 for t in seconds["pruned"]]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3; 0: none)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds, median reported (default 10)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--runtime", default="eager", choices=RUNTIMES,
                        help="eager (default), compile (torch.compile) or onnxruntime (CPU, float32); the last "
                        "two run the static budget")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--processes", type=int, default=0, metavar="ROUNDS",
                        help="time each model alone in its own process, ROUNDS times in turn (default 0: both "
                        "models alternately in this process)")
    parser.add_argument("--only", choices=("dense", "pruned"), help=argparse.SUPPRESS)  # a --processes child
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    check_counts(args, {"batch_size": 1, "repeats": 1, "warmup": 0, "threads": 1, "processes": 0})
    device = check_device(args.device)
    if args.runtime != "eager":
        if args.budget not in (None, "static"):
            fail(f"--runtime {args.runtime} runs the static budget; drop --budget {args.budget}")
        args.budget = "static"
    if args.runtime == "onnxruntime" and (device.type != "cpu" or args.dtype != "float32"):
        fail("--runtime onnxruntime runs on --device cpu in --dtype float32")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.checkpoint and args.pruner is None and args.keep is None and args.p_logit is None:
        args.keep = DEFAULT_KEEP
    model = build_model(args).to(device)
    if args.runtime != "eager":
        try:
            model.static_counts()
        except ValueError as err:
            fail(str(err))
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, *model.host.patch_embed.img_size, generator=g).to(device)
    if args.processes:
        timed = in_processes(argv, args.processes, args.batch_size)
    else:
        timed = benchmark(model, images, warmup=args.warmup, repeats=args.repeats, dtype=DTYPES[args.dtype],
                          runtime=args.runtime, backend=args.compile_backend, stages=args.json, only=args.only)
    result = {"model": args.model, **pruner_report(model.pruner), "keep": args.keep,
              "p_logit": args.p_logit, "budget": model.budget or model.pruner.default_budget,
              "batch_size": args.batch_size, "dtype": args.dtype, "device": device_name(device),
              "torch": torch.__version__, "runtime": args.runtime, **timed}
    if args.json or args.only:
        print(json.dumps(result))
        return 0
    print(f"{result['model']} ({result['pruner']}, budget={result['budget']}) batch {args.batch_size}, "
          f"{args.dtype}, {result['device']}, runtime {args.runtime}")
    print(f"  dense  {result['dense_img_s']:9.1f} img/s   {result['dense_gflops']:.3f} GFLOPs")
    print(f"  pruned {result['pruned_img_s']:9.1f} img/s   {result['gflops']:.3f} GFLOPs (scout {result['scout_gflops']:.3f})")
    print(f"  speedup {result['speedup']:.2f}x of ideal {result['ideal_speedup']:.2f}x: "
          f"share_of_ideal {result['share_of_ideal']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
