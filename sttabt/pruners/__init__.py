"""Pruners: pure mask maths (``masks``, ``backtrack``, ``cls_topk``, ``concrete``, ``layout``) and the modules
using them: planned (``pruners``, ``cls_topk``) and online (``online``)."""
from .backtrack import backtrack_topk, forward_topk
from .concrete import concrete_masks, concrete_regulariser
from .masks import BUDGETS, counts, keep_ratio_per_layer
from .pruners import (ONLINE, PRUNERS, BacktrackPruner, ConcretePruner, ManualTopKPruner, PlannedPruner,
                      create_pruner, keep_schedule, manual_schedule)
from .cls_topk import EViTPruner, cls_topk
from .online import EViTOnlinePruner, LTPPruner, OnlinePruner
