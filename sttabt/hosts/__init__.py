"""Host adapters: what the one set of executors (:mod:`sttabt.executors.core`) needs from a host.

A :class:`~sttabt.hosts.base.HostAdapter` wraps a host's layers and gives, per layer, in the host's
own norm order (pre-norm timm blocks, post-norm BERT layers):

* ``attention(layer, x, keys)``: attention probabilities (B, H, n, n) over the ``keys`` and the values
  (what an online pruner reads, and what the rest of the layer needs);
* ``finish(layer, x, probs, values, m_out)``: the attention output, residuals, norms and feed-forward,
  a token outside ``m_out`` passing through unchanged;
* ``recorded_layer(layer, x, m_in, m_out, keys, record=, workspace=)``: the planned masked semantics
  (DESIGN.md section 3.4), also returning the layer's attention (logits or head-averaged probs) when asked;
* ``scores(layer, x, record, keys, workspace)``: that attention alone (a scout's last layer);
* ``workspace(x)``: an attention buffer every layer may reuse at inference (None: none);
* ``dense_layer(layer, x, key_mask)``: the host's own layer, fused attention (no plan);
* ``pruned_layer(layer, x, n_out, key_mask)``: fused attention on sorted tokens, first ``n_out`` out;
* ``prefix``: how many leading tokens are always kept.

Adapters: :mod:`sttabt.hosts.timm_vit` (timm ``VisionTransformer``: DeiT, ViT, DeiT-III, LV-ViT) and
:mod:`sttabt.hosts.bert` (BERT, RoBERTa, I-BERT of ``transformers``). A new host is one adapter file.
"""
from .base import HostAdapter
from .timm_vit import TimmViTAdapter
