"""End-to-end STTABT training (``tools/train_imagenet.py``): dense teacher, approximation-network
distillation, concrete fine-tuning per p-logit, on one process or under ``torchrun`` (DDP).

Modules, one job each: :mod:`.args` (flags and YAML), :mod:`.data` (data sets, seeded per-sample
augmentation, samplers), :mod:`.augment` (timm transforms and Mixup), :mod:`.distributed`,
:mod:`.tasks` (each stage's loss), :mod:`.loop` (epochs, accumulation, EMA, checkpoints),
:mod:`.evaluate`, :mod:`.state` (checkpoints and RNG), :mod:`.log`, :mod:`.summary`, :mod:`.stages`.
"""
from .args import parse_args, parse_p_logits
from .pipeline import check_inputs, run_pipeline, train_stages
