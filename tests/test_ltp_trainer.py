"""ltp_nlp.trainer on a tiny random BERT and a toy task: the soft stage prunes more as lambda pushes the
thresholds up, the threshold optimiser is checkpointed and restored, the hard stage freezes the
thresholds, and evaluation reports FLOPs."""
from __future__ import annotations

import os

import datasets
import pytest
import torch

import ltp_nlp  # noqa: F401  (registers the Auto classes)
from ltp_nlp import LTPConfig, LTPForSequenceClassification
from ltp_nlp.trainer import (THRESHOLD_OPTIMIZER_NAME, THRESHOLD_SCHEDULER_NAME, LTPTrainer, LTPTrainingArguments,
                             flops_metrics)

TINY = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
            max_position_embeddings=40, initializer_range=0.3, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, num_labels=2)
CLS, SIGNAL = 3, 7   # label 1 when the SIGNAL token occurs
EXAMPLES = 32
FLOPS_KEYS = ("eval_baseline_gflops", "eval_gflops", "eval_relative_flops", "eval_kept_mean", "eval_kept_layer_0",
              "eval_kept_layer_1")


def tiny_model(host_type: str = "bert", **prune) -> LTPForSequenceClassification:
    torch.manual_seed(0)
    return LTPForSequenceClassification(LTPConfig(host_type=host_type, score_length=16, **{**TINY, **prune}))


def toy_dataset(n: int = EXAMPLES, seed: int = 0) -> datasets.Dataset:
    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for i in range(n):
        length = int(torch.randint(6, 15, (1,), generator=g))
        ids = [CLS] + torch.randint(8, 60, (length - 1,), generator=g).tolist()
        if i % 2:
            ids[int(torch.randint(1, length, (1,), generator=g))] = SIGNAL
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * length)
        rows["labels"].append(i % 2)
    return datasets.Dataset.from_dict(rows)


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    width = max(len(row["input_ids"]) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row["input_ids"])] = torch.tensor(row["input_ids"])
        mask[i, :len(row["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([row["labels"] for row in rows])}


def training_args(tmp_path, **overrides) -> LTPTrainingArguments:
    settings = dict(output_dir=str(tmp_path / "out"), report_to="none", task="SST2", per_device_train_batch_size=8,
                    per_device_eval_batch_size=16, learning_rate=1e-4, num_train_epochs=1, logging_steps=1,
                    eval_strategy="no", save_strategy="no", disable_tqdm=True, seed=0, use_cpu=True,
                    dataloader_pin_memory=False)
    return LTPTrainingArguments(**{**settings, **overrides})


def trainer_for(model, args, data=None) -> LTPTrainer:
    data = data if data is not None else toy_dataset()
    return LTPTrainer(model=model, args=args, train_dataset=data, eval_dataset=data, data_collator=collate)


SOFT = dict(masking_mode="soft", lambda_threshold=1.0, temperature=1e-2, lr_threshold=1e-2)


def test_soft_stage_lowers_the_kept_share(tmp_path):
    # three layers: layer 0 never prunes (as in the reference), so two would prune only after the last
    model = tiny_model(prune_mode="absolute_threshold", final_token_threshold=0.0, num_hidden_layers=3)
    trainer = trainer_for(model, training_args(tmp_path, max_steps=20, **SOFT))
    before = trainer.evaluate()
    assert before["eval_kept_mean"] > 0.95 and before["eval_relative_flops"] == pytest.approx(1, abs=0.05)
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_kept_mean"] < before["eval_kept_mean"] - 0.15
    assert after["eval_relative_flops"] < before["eval_relative_flops"]
    assert (model.ltp.pruner.threshold_delta[1:] > 0).all()   # lambda pushed every threshold up
    assert model.ltp.pruner.threshold_delta[0] == 0            # but layer 0's, which is skipped
    assert trainer.threshold_optimizer.param_groups[0]["params"][0] is model.ltp.pruner.threshold_delta
    main_ids = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert id(model.ltp.pruner.threshold_delta) not in main_ids
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    for key in ("task_loss", "pruning_loss", "regulariser", "kept_mean", "threshold_layer_1"):
        assert key in train_logs[-1], key
    assert train_logs[-1]["kept_mean"] < train_logs[0]["kept_mean"]
    assert train_logs[-1]["regulariser"] == pytest.approx(train_logs[-1]["pruning_loss"])  # lambda = 1


def test_lambda_zero_adds_no_regulariser(tmp_path):
    model = tiny_model(prune_mode="absolute_threshold", final_token_threshold=0.0)
    trainer = trainer_for(model, training_args(tmp_path, max_steps=2, **{**SOFT, "lambda_threshold": 0.0}))
    inputs = collate([toy_dataset(4)[i] for i in range(4)])
    model.train()
    loss = trainer.compute_loss(model, inputs)
    out = model(**inputs, masking_mode="soft", temperature=1e-2)
    torch.testing.assert_close(loss, out.loss)


def test_threshold_optimizer_is_checkpointed_and_resumed(tmp_path):
    settings = dict(max_steps=4, save_strategy="steps", save_steps=2, **SOFT)
    straight = trainer_for(tiny_model(prune_mode="absolute_threshold"), training_args(tmp_path / "a", **settings))
    straight.train()
    checkpoint = tmp_path / "a" / "out" / "checkpoint-2"
    saved = torch.load(checkpoint / THRESHOLD_OPTIMIZER_NAME, weights_only=True)
    assert int(saved["state"][0]["step"]) == 2 and saved["param_groups"][0]["lr"] > 0
    assert torch.load(checkpoint / THRESHOLD_SCHEDULER_NAME, weights_only=True)["last_epoch"] == 2

    resumed_model = tiny_model(prune_mode="absolute_threshold")
    resumed = trainer_for(resumed_model, training_args(tmp_path / "b", **settings))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert int(resumed.threshold_optimizer.state_dict()["state"][0]["step"]) == 4   # 2 restored + 2 more
    assert resumed.threshold_scheduler.last_epoch == 4
    torch.testing.assert_close(resumed_model.ltp.pruner.threshold_delta,
                               straight.model.ltp.pruner.threshold_delta, atol=1e-6, rtol=0)


@pytest.mark.parametrize("host_type", ["bert", "roberta"])
def test_hard_stage_freezes_thresholds(tmp_path, host_type):
    model = tiny_model(host_type, prune_mode="absolute_threshold", final_token_threshold=0.02, num_hidden_layers=3)
    with torch.no_grad():
        model.ltp.pruner.threshold_delta.fill_(0.01)
    weight = next(model.classifier.parameters()).detach().clone()
    trainer = trainer_for(model, training_args(tmp_path, max_steps=3, masking_mode="hard", lr_threshold=1.0))
    trainer.train()
    assert trainer.threshold_optimizer is None and trainer.threshold_scheduler is None
    assert not model.ltp.pruner.threshold_delta.requires_grad
    assert torch.equal(model.ltp.pruner.threshold_delta, torch.full((3,), 0.01))
    assert not torch.equal(next(model.classifier.parameters()), weight)   # the rest of the model trains
    assert trainer.state.log_history[0]["kept_mean"] < 1     # hard masks prune while training
    assert not any(name.startswith(THRESHOLD_OPTIMIZER_NAME) for name in os.listdir(tmp_path / "out"))


def test_evaluation_reports_flops(tmp_path):
    model = tiny_model(prune_mode="topk", token_keep_rate=0.3, num_hidden_layers=6)  # keep 1, 1, 1, .77, .53, .3
    metrics = trainer_for(model, training_args(tmp_path, report_to=["tensorboard"])).evaluate()
    assert list((tmp_path / "out" / "runs").rglob("events.out.tfevents*")), "no TensorBoard events written"
    for key in (*FLOPS_KEYS, "eval_kept_layer_5", "eval_accuracy", "eval_score"):
        assert key in metrics, key
    assert "eval_scout_gflops" not in metrics
    assert metrics["eval_relative_flops"] < 0.9 and metrics["eval_gflops"] < metrics["eval_baseline_gflops"]
    assert metrics["eval_kept_layer_3"] == pytest.approx(1.0) and metrics["eval_kept_layer_5"] < 0.7

    dense = trainer_for(tiny_model(), training_args(tmp_path / "dense")).evaluate()
    assert dense["eval_relative_flops"] == pytest.approx(1.0) and dense["eval_kept_mean"] == pytest.approx(1.0)
    assert dense["eval_baseline_gflops"] == pytest.approx(dense["eval_gflops"])


def test_concrete_soft_stage_trains_p_logits(tmp_path):
    model = tiny_model(prune_mode="sttabt_concrete", p_logit=0.0)
    before = model.ltp.pruner.p_logits.detach().clone()
    trainer = trainer_for(model, training_args(tmp_path, max_steps=2, **SOFT))
    trainer.train()
    assert trainer.threshold_optimizer.param_groups[0]["params"][0] is model.ltp.pruner.p_logits
    assert not torch.equal(model.ltp.pruner.p_logits, before)
    assert trainer.regulariser_weight == 1.0   # the concrete regulariser carries its own weight
    metrics = trainer.evaluate()
    assert metrics["eval_scout_gflops"] > 0


def test_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="cannot train with masking_mode='soft'"):
        trainer_for(tiny_model(prune_mode="topk", token_keep_rate=0.5), training_args(tmp_path, masking_mode="soft"))
    with pytest.raises(ValueError, match="masking_mode must be one of"):
        training_args(tmp_path, masking_mode="mixed")
    with pytest.raises(ValueError, match="temperature must be"):
        training_args(tmp_path, temperature=0.0)
    with pytest.raises(ValueError, match="unknown GLUE task"):
        training_args(tmp_path, task="SQuAD")
    with pytest.raises(TypeError, match="LTPTrainingArguments"):
        LTPTrainer(model=tiny_model(), args=None)
    assert training_args(tmp_path, task="mrpc").metric_for_best_model == "combined_score"


def test_flops_metrics_flattens_layers():
    flat = flops_metrics({"gflops": 1.0, "kept_per_layer": [1.0, 0.5]})
    assert flat == {"gflops": 1.0, "kept_layer_0": 1.0, "kept_layer_1": 0.5}
