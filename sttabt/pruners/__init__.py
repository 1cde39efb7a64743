"""Pruners: pure mask maths (``masks``, ``backtrack``, ``cls_topk``, ``concrete``) and the modules using them."""
from .backtrack import backtrack_topk, forward_topk
from .concrete import concrete_masks, concrete_regulariser
from .masks import BUDGETS, counts, keep_ratio_per_layer
from .pruners import (PRUNERS, BacktrackPruner, ConcretePruner, ManualTopKPruner, PlannedPruner,
                      create_pruner, keep_schedule, manual_schedule)
from .cls_topk import EViTPruner, cls_topk
