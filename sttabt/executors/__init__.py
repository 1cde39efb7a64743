"""Executors: run a host under a plan, masked (training, dense shapes) or pruned (inference)."""
from .block import attention_scores, masked_block, pruned_block
from .host import check_host, embed, has_token_head, head
from .masked import HostOutput, forward_masked
from .pruned import forward_pruned, survival_order
from .features import pruned_tokens
