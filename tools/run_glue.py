#!/usr/bin/env python
"""Dense fine-tuning of a BERT-family host on a GLUE task: the checkpoint LTP starts from.

    python tools/run_glue.py --model_name_or_path bert-base-uncased --task SST2 --data_dir GLUE_DIR \\
        --output_dir OUT --do_train --do_eval --per_device_train_batch_size 32 --learning_rate 2e-5 \\
        --num_train_epochs 3

Every ``transformers.TrainingArguments`` flag is accepted. Without ``--data_dir`` GLUE comes from the
Hugging Face hub. OUT receives the model (the host's own class, e.g. ``BertForSequenceClassification``),
its tokenizer, ``eval_results.json`` and ``trainer_state.json``; then run ``tools/convert_to_ltp.py OUT``.
TensorBoard logs (``OUT/runs``) are on by default when tensorboard is installed (``--report_to none``: off).

A non-empty OUT is refused (exit 2, nothing written) unless ``--overwrite_output_dir`` is given or
``--resume_from_checkpoint`` resumes the run inside it; the model, its configuration and the results
are written atomically (file by file, through a temporary file). ``--model_name_or_path`` must be a
BERT, RoBERTa or I-BERT checkpoint (a folder is checked before loading: ``config.json`` and weights
whole) or a hub name. A ``--max_seq_length`` beyond the model's positions is clamped to them, with a note.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import ltp_nlp  # noqa: F401  (fixes torchvision before transformers; registers the LTP Auto classes)
import datasets
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          HfArgumentParser, Trainer, TrainingArguments)
from transformers.integrations import is_tensorboard_available

from ltp_nlp.cli_checks import check_flags, check_model_folder
from ltp_nlp.config_checks import HOST_TYPES
from ltp_nlp.distill import classifier_fields
from ltp_nlp.glue import glue_file, load_glue, task_spec, tokenize_glue
from ltp_nlp.metrics import best_metric_name
from ltp_nlp.outputs import check_output_dir, save_atomically, save_trainer_model, write_json
from ltp_nlp.positions import clamp_max_length
from ltp_nlp.trainer import glue_metrics

REFERENCE_MAX_LENGTH = 128
EVAL_RESULTS = "eval_results.json"


@dataclass
class GlueArguments:
    model_name_or_path: str = field(metadata={"help": "pre-trained checkpoint (folder or hub name)"})
    task: str = field(metadata={"help": "GLUE task: RTE, MRPC, STSB, SST2, QNLI, QQP, MNLI, CoLA",
                                "aliases": ["--task_name"]})
    data_dir: str | None = field(default=None, metadata={"help": "GLUE folder (holding SST-2/, ...); "
                                                                 "default: the Hugging Face hub"})
    max_seq_length: int = field(default=REFERENCE_MAX_LENGTH, metadata={"help": "truncate longer inputs"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use the first N training examples"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use the first N dev examples"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "tokenizer, if not model_name_or_path's"})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "replace the run already in --output_dir "
                                                                        "(default: refuse a non-empty one)"})


def default_report_to() -> str:
    """``tensorboard`` when it is installed, else ``none``."""
    return "tensorboard" if is_tensorboard_available() else "none"


def check_data(task: str, data_dir: str | None, splits: list[str]) -> None:
    """Fail early, naming the missing file, when ``data_dir`` lacks a split."""
    if data_dir is not None:
        for split in splits:
            glue_file(task, data_dir, split)


def load_split(task: str, data_dir: str | None, split: str, tokenizer, max_length: int,
               max_samples: int | None = None) -> datasets.Dataset:
    """One GLUE split, cut to ``max_samples`` examples and tokenized (no padding: see the collator)."""
    dataset = load_glue(task, data_dir, split)
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f"--max_{'train' if split == 'train' else 'eval'}_samples must be >= 1, got {max_samples}")
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return tokenize_glue(dataset, tokenizer, task, max_length)


def load_tokenizer(path: str, fallback: str | None = None):
    """The tokenizer of ``fallback`` or ``path``, with a clear error when there is none."""
    name = fallback or path
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ValueError(f"no tokenizer could be loaded from {name} ({err}); pass a tokenizer folder or hub name "
                         "with --tokenizer_name") from None


def write_results(folder: str | Path, metrics: dict) -> Path:
    """``folder/eval_results.json``, written atomically."""
    return write_json(Path(folder) / EVAL_RESULTS, metrics)


def check_arguments(glue_args: GlueArguments, args: TrainingArguments) -> None:
    """The numeric flags, before anything is loaded (``ValueError`` naming the flag)."""
    check_flags([
        ("--per_device_train_batch_size", "positive_int", args.per_device_train_batch_size),
        ("--per_device_eval_batch_size", "positive_int", args.per_device_eval_batch_size),
        ("--gradient_accumulation_steps", "positive_int", args.gradient_accumulation_steps),
        ("--num_train_epochs", "positive", args.num_train_epochs),
        ("--learning_rate", "positive", args.learning_rate),
        ("--weight_decay", "non_negative", args.weight_decay),
        ("--save_steps", "positive", args.save_steps), ("--eval_steps", "positive", args.eval_steps),
        ("--logging_steps", "positive", args.logging_steps),
        ("--max_seq_length", "positive_int", glue_args.max_seq_length),
        ("--max_train_samples", "positive_int", glue_args.max_train_samples),
        ("--max_eval_samples", "positive_int", glue_args.max_eval_samples),
    ])


def ltp_advice(model_type: str | None) -> str:
    if model_type == "ltp":
        return "it is an LTP checkpoint: train it with tools/run_ltp.py"
    return "LTP runs on BERT, RoBERTa and I-BERT hosts"


def parse(argv: list[str] | None) -> tuple[GlueArguments, TrainingArguments]:
    parser = HfArgumentParser((GlueArguments, TrainingArguments))
    parser.set_defaults(report_to=default_report_to())
    glue_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    spec = task_spec(glue_args.task)
    glue_args.task = spec.name
    if not (training_args.do_train or training_args.do_eval):
        raise ValueError("nothing to do: pass --do_train and/or --do_eval")
    if training_args.output_dir is None:
        raise ValueError("--output_dir is required: the fine-tuned model is saved there")
    if training_args.metric_for_best_model is None:
        training_args.metric_for_best_model = best_metric_name(spec)
        training_args.greater_is_better = True
    check_arguments(glue_args, training_args)
    check_output_dir(training_args.output_dir, overwrite=glue_args.overwrite_output_dir,
                     resuming=bool(training_args.resume_from_checkpoint))
    check_model_folder(glue_args.model_name_or_path, "--model_name_or_path", HOST_TYPES, hub_ok=True,
                       advice=ltp_advice)
    return glue_args, training_args


def main(argv: list[str] | None = None) -> int:
    try:
        glue_args, args = parse(argv)
        splits = (["train"] if args.do_train else []) + (["dev"] if args.do_eval else [])
        check_data(glue_args.task, glue_args.data_dir, splits)
        spec = task_spec(glue_args.task)
        tokenizer = load_tokenizer(glue_args.model_name_or_path, glue_args.tokenizer_name)
        config = AutoConfig.from_pretrained(glue_args.model_name_or_path, **classifier_fields(spec))
        if config.model_type not in HOST_TYPES:
            raise ValueError(f"--model_name_or_path {glue_args.model_name_or_path} is a {config.model_type!r} model: "
                             f"{ltp_advice(config.model_type)}")
        max_length = clamp_max_length(glue_args.max_seq_length, config)
        model = AutoModelForSequenceClassification.from_pretrained(glue_args.model_name_or_path, config=config)
        load = dict(tokenizer=tokenizer, max_length=max_length)
        train = load_split(spec.name, glue_args.data_dir, "train", max_samples=glue_args.max_train_samples,
                           **load) if args.do_train else None
        dev = load_split(spec.name, glue_args.data_dir, "dev", max_samples=glue_args.max_eval_samples,
                         **load) if args.do_eval else None
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=glue_metrics(spec.name))
    if args.do_train:
        result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        trainer.log_metrics("train", result.metrics)
        save_trainer_model(trainer, args.output_dir)   # model and tokenizer
        save_atomically(lambda folder: trainer.state.save_to_json(str(Path(folder) / "trainer_state.json")),
                        args.output_dir)
    if args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        print(f"eval results: {write_results(args.output_dir, metrics)}")
    print(f"model and tokenizer: {args.output_dir}")
    print(f"next: python tools/convert_to_ltp.py {args.output_dir} --prune_mode absolute_threshold "
          "--final_token_threshold 0.01 --scoring_mode mean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
