"""sttabt: token pruning for timm Vision Transformers (STTABT, ICLR 2023) that really drops tokens.

``import sttabt`` registers the models with timm::

    import timm, sttabt
    model = timm.create_model("sttabt_deit_small", factor=4, p_logit=0.0).eval()
"""
import sttabt_compat

sttabt_compat.ensure_torchvision_ops()  # before anything imports torchvision (timm does)

# noqa: E402 below: the imports must follow the fix above
from .models import lvvit  # noqa: F401  (registers lvvit_small / lvvit_medium)
from . import registry  # noqa: F401  (registers the sttabt_* models)
from .approx import ApproxNet, ScoutStudent, distillation_loss
from .calibrate import calibrate
from .checkpoint import create_from_checkpoint, load_checkpoint, load_teacher, save_checkpoint
from .pruners import PRUNERS, create_pruner
from .wrap import STTABT, STTABTOutput, wrap

__version__ = "0.1.0"
