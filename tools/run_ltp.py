#!/usr/bin/env python
"""LTP's ``run.py``: the soft and hard threshold stages, the top-k baseline and STTABT's concrete stage.

    # 1. soft thresholds, from a converted fine-tuned checkpoint (tools/run_glue.py, tools/convert_to_ltp.py)
    python tools/run_ltp.py --arch ltp-base --task SST2 --restore OUT --lr 2e-5 --temperature 1e-3 \\
        --lambda 0.1 --weight_decay 0 --bs 64 --masking_mode soft --epoch 1 --save_step 100 --no_load
    #    -> checkpoints/base/SST2/absolute_threshold/rate_0.01/temperature_0.001/lambda_0.1/lr_2e-05  (CKPT_soft)
    # 2. hard thresholds (frozen), fine-tuning the model
    python tools/run_ltp.py --arch ltp-base --task SST2 --restore CKPT_soft --lr 1e-5 --bs 64 \\
        --masking_mode hard --epoch 5                                    # -> CKPT_soft/hard/lr_1e-05
    # top-k baseline                                                     # -> OUT/topk/keep_0.5/lr_1e-05
    python tools/run_ltp.py --task SST2 --restore OUT --prune_mode topk --token_keep_rate 0.5 --lr 1e-5 --epoch 5
    # STTABT concrete masks (OUT must hold a distilled scout)            # -> OUT/concrete/p_logit_-1.0/lr_2e-05
    python tools/run_ltp.py --task SST2 --restore OUT --prune_mode sttabt_concrete --p_logit -1 \\
        --masking_mode soft --lr 2e-5 --epoch 1

Folders start with the reference's layout (values written as Python prints the floats, as its run.py
did) and every pruning setting of the run is in the name, so runs with other settings never share one:

    soft LTP   checkpoints/{base|large}/TASK/absolute_threshold/rate_R/temperature_T/lambda_L/lr_LR
    hard       {restore}/hard/lr_LR               (the restored model's own prune settings)
    top-k      {restore}/topk/keep_K/lr_LR
    concrete   {restore}/concrete/p_logit_V/lr_LR (soft); {restore}/concrete/p_logit_V/hard/lr_LR (hard,
               when --p_logit or --prune_mode changes the restored settings)
    a hard stage under another --prune_mode: {restore}/absolute_threshold/rate_R/hard/lr_LR
    + /lr_threshold_X when --lr_threshold is given (soft stage)

A folder that already holds a run is refused (exit 2, nothing written) unless ``--overwrite_output_dir``
is given or ``--resume_from_checkpoint`` resumes the run in it; settings that are not in the name
(epochs, batch size, seed, ...) are kept apart by ``--output_dir``. Training
always starts from the weights of ``--restore``, never from its optimiser or trainer state; as in the
reference, ``--no_load`` keeps the model at the end of training instead of loading the best checkpoint
(by the task's metric) at the end. ``--output_dir`` chooses the folder. The output folder receives the
final model (with the tokenizer), ``eval_results.json``, the checkpoints (``checkpoint-N``, with
``threshold_optimizer.pt`` in the soft stage) and TensorBoard logs (``runs/``) when tensorboard is
installed; the final model, configuration and results are written atomically. ``--eval`` only evaluates
``--restore`` (and writes ``eval_results.json`` under ``--output_dir`` when given). ``--restore`` is
checked before loading (``config.json`` and weights whole, valid LTP settings) and a ``--max_seq_length``
beyond the model's positions is clamped to them, with a note.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ltp_nlp  # noqa: E402  (fixes torchvision before transformers; registers the LTP Auto classes)
import torch  # noqa: E402
from transformers import DataCollatorWithPadding  # noqa: E402

from ltp_nlp import LTPForSequenceClassification  # noqa: E402
from ltp_nlp.cli_checks import check_flags, check_model_folder  # noqa: E402
from ltp_nlp.configuration_ltp import SOFT_MODES  # noqa: E402
from ltp_nlp.distill import check_classifier  # noqa: E402
from ltp_nlp.glue import task_spec  # noqa: E402
from ltp_nlp.outputs import check_output_dir, check_output_file, save_trainer_model  # noqa: E402
from ltp_nlp.positions import clamp_max_length  # noqa: E402
from ltp_nlp.pruners import DEFAULT_TEMPERATURE  # noqa: E402
from ltp_nlp.trainer import LTPTrainer, LTPTrainingArguments  # noqa: E402
from run_glue import (EVAL_RESULTS, REFERENCE_MAX_LENGTH, check_data, default_report_to, load_split,  # noqa: E402
                      write_results)

ARCHS = {"ltp-base": "base", "ltp-large": "large"}
RUNNABLE_MODES = ("absolute_threshold", "topk", "sttabt_concrete")
DEFAULT_OUTPUT_ROOT = "checkpoints"
DEFAULT_LR = "4e-5"                  # the reference's per-task learning rates, as it wrote them in folders
TASK_LR = {"MRPC": "2e-5"}
KEPT_CHECKPOINTS = 3                 # the reference keeps the last 3 checkpoints unless --save_all


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCHS), default="ltp-base", help="only picks checkpoints/base or /large")
    p.add_argument("--task", required=True, help="GLUE task: RTE, MRPC, STSB, SST2, QNLI, QQP, MNLI, CoLA")
    p.add_argument("--restore", required=True, help="checkpoint folder to start from (its weights only)")
    p.add_argument("--masking_mode", choices=["soft", "hard"], default="hard")
    p.add_argument("--prune_mode", choices=RUNNABLE_MODES, help="override the restored config's prune_mode")
    p.add_argument("--token_keep_rate", type=float, help="topk: keep rate of the last layer")
    p.add_argument("--p_logit", type=float, help="sttabt_concrete: initial p-logit (target keep sigmoid(V))")
    p.add_argument("--lr", type=float, help=f"learning rate (default {DEFAULT_LR}, MRPC {TASK_LR['MRPC']})")
    p.add_argument("--lr_threshold", type=float, help="learning rate of the thresholds (default: --lr)")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="soft-mask temperature T")
    p.add_argument("--lambda_threshold", "--lambda", dest="lambda_threshold", type=float, default=0.0,
                   help="weight of the LTP regulariser (soft stage)")
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--bs", type=int, default=32, help="batch size (training and evaluation)")
    p.add_argument("--epoch", type=float, default=10, help="training epochs")
    p.add_argument("--save_steps", "--save_step", dest="save_steps", type=int,
                   help="evaluate, log and save every N steps (default: every epoch)")
    p.add_argument("--no_load", action="store_true", help="keep the final model, not the best checkpoint")
    p.add_argument("--save_all", action="store_true",
                   help=f"keep every checkpoint (default: the last {KEPT_CHECKPOINTS})")
    p.add_argument("--eval", action="store_true", help="only evaluate --restore (hard masks)")
    p.add_argument("--data_dir", help="GLUE folder (holding SST-2/, ...); default: the Hugging Face hub")
    p.add_argument("--max_train_samples", type=int, help="use the first N training examples")
    p.add_argument("--max_eval_samples", type=int, help="use the first N dev examples")
    p.add_argument("--max_seq_length", type=int, default=REFERENCE_MAX_LENGTH)
    p.add_argument("--output_dir", help="output folder (default: the reference's layout, see above)")
    p.add_argument("--overwrite_output_dir", action="store_true",
                   help="replace the run already in the output folder (default: refuse a non-empty one)")
    p.add_argument("--resume_from_checkpoint", help="resume this run from one of its own checkpoint-N folders")
    p.add_argument("--tokenizer", help="tokenizer folder or name, when --restore has none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report_to", default=default_report_to(), help="tensorboard (default when installed) or none")
    return p


def read_config(restore: str) -> dict:
    """The checked ``config.json`` of ``--restore`` (``ValueError`` saying what is wrong): a fine-tuned
    classifier, not a bare pretrained encoder."""
    config = check_model_folder(restore, "--restore")
    check_classifier(restore, "--restore")
    return config


def overrides(args: argparse.Namespace) -> dict:
    """Config fields to change on load (``from_pretrained(restore, **overrides)``)."""
    new = {}
    if args.prune_mode is not None:
        new["prune_mode"] = args.prune_mode
    if args.token_keep_rate is not None:
        new["token_keep_rate"] = args.token_keep_rate
    if args.p_logit is not None:
        new["p_logit"] = args.p_logit
    return new


def check(args: argparse.Namespace, config: dict) -> dict:
    """Every check that needs no model: raises ``ValueError`` saying what to do. Returns the effective
    prune fields (the restored config's, overridden by the flags)."""
    args.task = task_spec(args.task).name
    fields = {"prune_mode": "none", "final_token_threshold": 0.01, "token_keep_rate": 1.0, "p_logit": 0.0}
    fields.update({k: config[k] for k in fields if k in config})
    fields.update(overrides(args))
    mode = fields["prune_mode"]
    if mode not in RUNNABLE_MODES:
        raise ValueError(f"{args.restore} has prune_mode {mode!r}: convert it with tools/convert_to_ltp.py or pass "
                         f"--prune_mode ({', '.join(RUNNABLE_MODES)})")
    if args.masking_mode == "soft" and mode not in SOFT_MODES:
        raise ValueError(f"prune_mode {mode!r} has no soft masks: use --masking_mode hard "
                         f"(soft works with {', '.join(SOFT_MODES)})")
    if args.token_keep_rate is not None and mode != "topk":
        raise ValueError("--token_keep_rate is for --prune_mode topk")
    if args.p_logit is not None and mode != "sttabt_concrete":
        raise ValueError("--p_logit is for --prune_mode sttabt_concrete")
    check_flags([("--token_keep_rate", "fraction", args.token_keep_rate), ("--p_logit", "finite", args.p_logit),
                 ("--lr", "positive", args.lr), ("--lr_threshold", "non_negative", args.lr_threshold),
                 ("--temperature", "positive", args.temperature),
                 ("--lambda_threshold", "non_negative", args.lambda_threshold),
                 ("--weight_decay", "non_negative", args.weight_decay), ("--bs", "positive_int", args.bs),
                 ("--epoch", "positive", args.epoch), ("--save_steps", "positive_int", args.save_steps),
                 ("--max_seq_length", "positive_int", args.max_seq_length),
                 ("--max_train_samples", "positive_int", args.max_train_samples),
                 ("--max_eval_samples", "positive_int", args.max_eval_samples)])
    if args.resume_from_checkpoint and not Path(args.resume_from_checkpoint).is_dir():
        raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint} does not exist")
    return fields


def learning_rate_text(args: argparse.Namespace) -> str:
    return str(args.lr) if args.lr is not None else TASK_LR.get(args.task, DEFAULT_LR)


def output_folder(args: argparse.Namespace, fields: dict, restored: dict | None = None) -> Path:
    """``--output_dir``, or the layout of the module docstring: every pruning setting is in the name.
    ``restored``: the ``--restore`` config's prune fields (what a plain hard stage continues)."""
    if args.output_dir:
        return Path(args.output_dir)
    lr = f"lr_{learning_rate_text(args)}"
    restore, mode = Path(args.restore), fields["prune_mode"]
    restored = restored or {}
    if mode == "topk":
        return restore / "topk" / f"keep_{fields['token_keep_rate']}" / lr
    extra = [f"lr_threshold_{args.lr_threshold}"] if args.masking_mode == "soft" and args.lr_threshold is not None \
        else []
    if mode == "sttabt_concrete":
        base = restore / "concrete" / f"p_logit_{fields['p_logit']}"
        if args.masking_mode == "soft":
            return base.joinpath(lr, *extra)
        if restored.get("prune_mode") != mode or args.p_logit is not None:
            return base / "hard" / lr
        return restore / "hard" / lr
    if args.masking_mode == "hard":
        if restored.get("prune_mode") != mode:
            return restore / mode / f"rate_{fields['final_token_threshold']}" / "hard" / lr
        return restore / "hard" / lr
    return (Path(DEFAULT_OUTPUT_ROOT) / ARCHS[args.arch] / args.task / mode / f"rate_{fields['final_token_threshold']}"
            / f"temperature_{args.temperature}" / f"lambda_{args.lambda_threshold}" / lr).joinpath(*extra)


def training_arguments(args: argparse.Namespace, output: Path, report_to: str | None = None) -> LTPTrainingArguments:
    every = dict(eval_strategy="steps", save_strategy="steps", logging_strategy="steps", eval_steps=args.save_steps,
                 save_steps=args.save_steps, logging_steps=args.save_steps) if args.save_steps else \
        dict(eval_strategy="epoch", save_strategy="epoch", logging_strategy="epoch")
    return LTPTrainingArguments(
        output_dir=str(output), task=args.task, masking_mode=args.masking_mode, lambda_threshold=args.lambda_threshold,
        temperature=args.temperature, lr_threshold=args.lr_threshold, learning_rate=float(learning_rate_text(args)),
        weight_decay=args.weight_decay, per_device_train_batch_size=args.bs, per_device_eval_batch_size=args.bs,
        num_train_epochs=args.epoch, load_best_model_at_end=not args.no_load,
        save_total_limit=None if args.save_all else KEPT_CHECKPOINTS, seed=args.seed,
        report_to=report_to or args.report_to, dataloader_pin_memory=torch.cuda.is_available(),
        **every)


def load_tokenizer(args: argparse.Namespace):
    from transformers import AutoTokenizer

    name = args.tokenizer or args.restore
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ValueError(f"no tokenizer in {name} ({type(err).__name__}): pass --tokenizer FOLDER_OR_NAME") from None


def load_model(args: argparse.Namespace) -> LTPForSequenceClassification:
    model = LTPForSequenceClassification.from_pretrained(args.restore, **overrides(args))
    spec = task_spec(args.task)
    if model.config.num_labels != spec.num_labels:
        raise ValueError(f"{args.restore} has {model.config.num_labels} output labels but {spec.name} needs "
                         f"{spec.num_labels}: restore a checkpoint fine-tuned on {spec.name}")
    model.config.finetuning_task = spec.name  # saved with the model: what tools/plot.py --glue reads
    return model


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = read_config(args.restore)
        fields = check(args, config)
        check_data(args.task, args.data_dir, ["dev"] if args.eval else ["train", "dev"])
        output = output_folder(args, fields, config)
        if args.eval:
            if args.output_dir:
                check_output_file(output / EVAL_RESULTS, overwrite=args.overwrite_output_dir, flag="--output_dir")
        else:
            check_output_dir(output, overwrite=args.overwrite_output_dir,
                             flag="--output_dir" if args.output_dir else "the output folder",
                             resuming=bool(args.resume_from_checkpoint))
        max_length = clamp_max_length(args.max_seq_length, config)
        tokenizer = load_tokenizer(args)
        model = load_model(args)
        load = dict(tokenizer=tokenizer, max_length=max_length)
        dev = load_split(args.task, args.data_dir, "dev", max_samples=args.max_eval_samples, **load)
        train = None if args.eval else load_split(args.task, args.data_dir, "train",
                                                  max_samples=args.max_train_samples, **load)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.eval:
        return evaluate_only(args, model, tokenizer, dev)
    print(f"output folder: {output}")
    trainer = LTPTrainer(model=model, args=training_arguments(args, output), train_dataset=train, eval_dataset=dev,
                         processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    save_trainer_model(trainer, output)  # model and tokenizer, file by file atomically
    results = write_results(output, metrics)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    print(f"model and tokenizer: {output}\neval results: {results}")
    if "tensorboard" in trainer.args.report_to:
        print(f"tensorboard logs: {output / 'runs'}")
    if args.masking_mode == "soft":
        print(f"next (hard stage): python tools/run_ltp.py --arch {args.arch} --task {args.task} --restore {output} "
              f"--lr 1e-5 --bs {args.bs} --masking_mode hard --epoch 5")
    return 0


def evaluate_only(args: argparse.Namespace, model, tokenizer, dev) -> int:
    """``--eval``: the restored model's metrics and FLOPs (hard masks); saved under --output_dir if given."""
    with tempfile.TemporaryDirectory() as scratch:
        trainer = LTPTrainer(model=model, args=training_arguments(args, Path(scratch), "none"), eval_dataset=dev,
                             processing_class=tokenizer,
                             data_collator=DataCollatorWithPadding(tokenizer))
        metrics = trainer.evaluate()
    print(json.dumps(metrics, indent=2, sort_keys=True))
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        print(f"eval results: {write_results(args.output_dir, metrics)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
