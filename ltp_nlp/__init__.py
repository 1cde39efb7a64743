"""ltp_nlp: token pruning for BERT-family encoders (LTP, and STTABT's pruners on text).

``import ltp_nlp`` registers ``LTPConfig`` (model type ``ltp``) and the models with transformers'
``Auto*`` classes::

    import ltp_nlp
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained("checkpoints/base/SST2/...")
"""
import sttabt_compat

sttabt_compat.ensure_torchvision_ops()  # before transformers imports torchvision

# noqa: E402 below: the imports must follow the fix above
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification  # noqa: E402

from .configuration_ltp import PRUNE_MODES, LTPConfig  # noqa: E402
from .modeling_ltp import (LTPForSequenceClassification, LTPModel, LTPSequenceClassifierOutput,  # noqa: E402
                           infer_host_type)

AutoConfig.register("ltp", LTPConfig, exist_ok=True)
AutoModel.register(LTPConfig, LTPModel, exist_ok=True)
AutoModelForSequenceClassification.register(LTPConfig, LTPForSequenceClassification, exist_ok=True)

__all__ = ["LTPConfig", "LTPModel", "LTPForSequenceClassification", "LTPSequenceClassifierOutput",
           "PRUNE_MODES", "infer_host_type"]
