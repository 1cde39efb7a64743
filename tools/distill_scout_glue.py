#!/usr/bin/env python
"""Distil the STTABT approximation network (scout) of a fine-tuned GLUE classifier (DESIGN.md 3.1).

    python tools/distill_scout_glue.py --restore checkpoints/base/SST2 --task SST2 \\
        --data_dir ../shared/data/glue --factor 4 --epochs 3 --lr 1e-4 --bs 32

``--restore`` is an LTP checkpoint or a plain BERT / RoBERTa / I-BERT classifier folder (with its
tokenizer). The scout starts from the host by linear interpolation and is trained against the frozen
host on ``L_att + L_hid + L_emb + L_pred`` (AdamW, no weight decay, constant lr, gradients clipped at
0.5). Reported: the mean attention KL on the dev set for a random scout, the interpolated init and the
distilled scout, next to the paper's BERT-base numbers.

Written to ``--output_dir`` (default ``{restore}/approx_f{factor}``): an LTP checkpoint with
``prune_mode: "sttabt_abt"`` and the scout (``save_pretrained`` + tokenizer), ``distill_results.json``
and TensorBoard scalars under ``tb/``. The run works in ``{output_dir}.partial`` and renames it at the
end, so an interrupted run never leaves a complete-looking folder; an output folder that already holds
something is refused (exit 2, before any model is loaded) unless ``--overwrite_output_dir`` is given.
Every flag is checked first (positive sizes and rates, ``--device`` present on this machine,
``--restore`` a whole checkpoint folder); a ``--max_length`` beyond the model's positions is clamped
to them, with a note. The result is the ``--restore`` of
STTABT concrete fine-tuning (``prune_mode=sttabt_concrete``) and of training-free ABT evaluation
(``tools/eval_glue.py --prune_mode sttabt_abt --token_keep_rate 0.4``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

import ltp_nlp  # noqa: F401  (registers the Auto classes; fixes torchvision first)
from ltp_nlp.distill import (CLIP_GRAD, PAPER_ATTENTION_KL, load_checkpoint, prepare_distillation, random_scout,
                             reconfigure, replace_folder, scout_optimizer, scout_quality, distill_step)
from ltp_nlp.cli_checks import check_device, check_flags, check_model_folder
from ltp_nlp.glue import load_glue, task_spec, tokenize_glue
from ltp_nlp.outputs import OVERWRITE_FLAG, check_output_dir, write_json
from ltp_nlp.positions import clamp_max_length

RESULTS = "distill_results.json"
PARTIAL_SUFFIX = ".partial"
INITS = ("random_init", "interpolated_init", "distilled")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--restore", required=True, help="fine-tuned checkpoint folder (LTP or host) = the teacher")
    parser.add_argument("--task", required=True, help="GLUE task: SST2, MRPC, RTE, QNLI, ...")
    parser.add_argument("--data_dir", "--data-dir", help="GLUE folder holding <task>/train.tsv and dev.tsv "
                        "(default: the Hugging Face hub)")
    parser.add_argument("--factor", type=int, default=4, help="the scout is this many times thinner")
    parser.add_argument("--epochs", type=float, default=3, help="epochs over the training set (may be fractional)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--bs", "--batch_size", "--batch-size", dest="bs", type=int, default=32)
    parser.add_argument("--eval_bs", "--eval-bs", type=int, default=64, help="batch size of the dev measurements")
    parser.add_argument("--clip_grad", "--clip-grad", type=float, default=CLIP_GRAD)
    parser.add_argument("--max_length", "--max-length", type=int, default=128)
    parser.add_argument("--max_train_samples", "--max-train-samples", type=int, help="use the first N training rows")
    parser.add_argument("--max_eval_samples", "--max-eval-samples", type=int, help="use the first N dev rows")
    parser.add_argument("--output_dir", "--output-dir", help="default: {restore}/approx_f{factor}")
    parser.add_argument(OVERWRITE_FLAG, "--overwrite-output-dir", dest="overwrite_output_dir", action="store_true",
                        help="replace the scout checkpoint already in the output folder (default: refuse)")
    parser.add_argument("--tokenizer", help="tokenizer name or folder (default: the one saved in --restore)")
    parser.add_argument("--token_keep_rate", "--token-keep-rate", type=float,
                        help="keep rate saved in the checkpoint for ABT (default: the teacher's)")
    parser.add_argument("--logging_steps", "--logging-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--no_tensorboard", "--no-tensorboard", action="store_true")
    parser.add_argument("--no_progress", "--no-progress", action="store_true", help="no tqdm bar")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Every flag, before anything is loaded (``ValueError`` naming the flag)."""
    task_spec(args.task)
    check_flags([("--factor", "positive_int", args.factor), ("--epochs", "positive", args.epochs),
                 ("--lr", "positive", args.lr), ("--bs", "positive_int", args.bs),
                 ("--eval_bs", "positive_int", args.eval_bs), ("--clip_grad", "positive", args.clip_grad),
                 ("--max_length", "positive_int", args.max_length),
                 ("--max_train_samples", "positive_int", args.max_train_samples),
                 ("--max_eval_samples", "positive_int", args.max_eval_samples),
                 ("--token_keep_rate", "fraction", args.token_keep_rate),
                 ("--logging_steps", "positive_int", args.logging_steps), ("--threads", "positive_int", args.threads)])
    check_device(args.device)


def load_tokenizer(restore: str, name: str | None):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name or restore)
    except (OSError, ValueError) as err:
        raise ValueError(f"no tokenizer in {name or restore} ({err}); pass --tokenizer NAME_OR_FOLDER") from None


def glue_loader(task: str, data_dir, split: str, tokenizer, *, max_length: int, limit: int | None,
                batch_size: int, shuffle: bool, seed: int = 0) -> torch.utils.data.DataLoader:
    """Padded batches of one tokenized GLUE split (the first ``limit`` rows)."""
    from transformers import DataCollatorWithPadding

    dataset = load_glue(task, data_dir, split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    encoded = tokenize_glue(dataset, tokenizer, task, max_length)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(encoded, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                       collate_fn=DataCollatorWithPadding(tokenizer))


class Logger:
    """TensorBoard scalars (optional) and a JSON-lines log in the work folder."""

    def __init__(self, folder: Path, tensorboard: bool):
        self.path = folder / "log.jsonl"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder / "tb"))

    def log(self, tag: str, step: int, values: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"tag": tag, "step": step, **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{tag}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(model, train_loader, dev_loader, args, logger: Logger) -> tuple[int, list[dict]]:
    """The distillation loop; returns the number of steps and the dev quality after each epoch."""
    from tqdm.auto import tqdm

    scout = prepare_distillation(model)
    optimizer = scout_optimizer(scout, args.lr)
    total = max(1, round(args.epochs * len(train_loader)))
    history, step = [], 0
    bar = tqdm(total=total, desc="distilling scout", disable=args.no_progress, dynamic_ncols=True)
    while step < total:
        for batch in train_loader:
            values = distill_step(model, batch, optimizer, clip_grad=args.clip_grad)
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{values['loss']:.4f}", kl=f"{values['attention_kl']:.4f}")
            if step % args.logging_steps == 0 or step == total:
                logger.log("train", step, values)
            if step % len(train_loader) == 0 or step == total:
                quality = scout_quality(model, scout, dev_loader)
                logger.log("dev", step, quality)
                history.append({"step": step, "epoch": step / len(train_loader), **quality})
                bar.write(f"step {step}: dev attention KL {quality['attention_kl']:.4f}")
            if step == total:
                break
    bar.close()
    return step, history


def kl_table(kl: dict[str, float], factor: int, task: str, examples: int) -> str:
    paper = PAPER_ATTENTION_KL.get(factor, {})
    lines = [f"mean attention KL on {task} dev ({examples} examples)   ours     "
             f"paper (BERT-base, GLUE, factor {factor})"]
    for name in INITS:
        quoted = f"{paper[name]:.2f}" if name in paper else "-"
        lines.append(f"  {name.replace('_', ' '):<44}{kl[name]:8.4f}    {quoted}")
    return "\n".join(lines)


def prepare(args: argparse.Namespace):
    """(model with an interpolated scout, tokenizer, train loader, dev loader); ``ValueError`` /
    ``FileNotFoundError`` / ``OSError`` say what is wrong with the inputs."""
    task = task_spec(args.task).name
    max_length = clamp_max_length(args.max_length, check_model_folder(args.restore, "--restore"), flag="--max_length")
    teacher = load_checkpoint(args.restore)
    settings = {"prune_mode": "sttabt_abt", "approx_factor": args.factor}
    if args.token_keep_rate is not None:
        settings["token_keep_rate"] = args.token_keep_rate
    model = reconfigure(teacher, init_scout="interpolate", **settings).to(args.device)
    model.ltp.scout.reset_from(model)  # interpolated init even if the checkpoint had a scout
    tokenizer = load_tokenizer(args.restore, args.tokenizer)
    common = dict(max_length=max_length)
    train_loader = glue_loader(task, args.data_dir, "train", tokenizer, limit=args.max_train_samples,
                               batch_size=args.bs, shuffle=True, seed=args.seed, **common)
    dev_loader = glue_loader(task, args.data_dir, "dev", tokenizer, limit=args.max_eval_samples,
                             batch_size=args.eval_bs, shuffle=False, **common)
    return model, tokenizer, train_loader, dev_loader


def main(argv=None) -> int:
    args = parse_args(argv)
    output = Path(args.output_dir or Path(args.restore) / f"approx_f{args.factor}")
    work = output.with_name(output.name + PARTIAL_SUFFIX)
    started = time.time()
    try:
        check_args(args)
        check_output_dir(output, overwrite=args.overwrite_output_dir,
                         flag="--output_dir" if args.output_dir else "the output folder")
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        model, tokenizer, train_loader, dev_loader = prepare(args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    task = task_spec(args.task).name
    if work.exists():
        shutil.rmtree(work)  # left by an interrupted run
    work.mkdir(parents=True)
    logger = Logger(work, tensorboard=not args.no_tensorboard)
    model.eval()
    quality = {"random_init": scout_quality(model, random_scout(model, args.factor, args.seed), dev_loader),
               "interpolated_init": scout_quality(model, model.ltp.scout, dev_loader)}
    for name, values in quality.items():
        logger.log(name, 0, values)
    logger.log("dev", 0, quality["interpolated_init"])  # the dev curve starts at the interpolated init
    steps, history = train(model, train_loader, dev_loader, args, logger)
    quality["distilled"] = history[-1] if history else scout_quality(model, model.ltp.scout, dev_loader)
    logger.close()
    kl = {name: quality[name]["attention_kl"] for name in INITS}
    results = {
        "task": task, "restore": str(args.restore), "output_dir": str(output), "factor": args.factor,
        "host_type": model.config.host_type, "epochs": args.epochs, "steps": steps, "lr": args.lr,
        "batch_size": args.bs, "clip_grad": args.clip_grad, "max_length": args.max_length, "seed": args.seed,
        "train_examples": len(train_loader.dataset), "dev_examples": len(dev_loader.dataset),
        "attention_kl": kl, "paper_attention_kl_bert_base": PAPER_ATTENTION_KL.get(args.factor, {}),
        "dev": {name: {k: v for k, v in values.items() if k not in ("step", "epoch")}
                for name, values in quality.items()},
        "history": history, "seconds": time.time() - started,
    }
    model.requires_grad_(True)
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    write_json(work / RESULTS, results)
    replace_folder(work, output)
    print(kl_table(kl, args.factor, task, results["dev_examples"]))
    print(f"saved the sttabt_abt checkpoint with its scout to {output}/ ({RESULTS}, log.jsonl"
          f"{'' if args.no_tensorboard else ', tb/'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
