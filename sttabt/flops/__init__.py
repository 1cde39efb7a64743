"""Exact FLOPs of (token-pruned) timm Vision Transformers.

Convention (the papers' and fvcore's): **one multiply-add is one FLOP**. Biases, activations
(GELU, ReLU), softmax, residual adds, scaling and layer-scale multiplies, positional-embedding adds
and pooling means are not counted (fvcore leaves these elementwise ops unsupported, i.e. zero).
Counted exactly as fvcore's default handles count them:

* ``Linear``: ``tokens * in_features * out_features``;
* ``Conv``: ``out_h * out_w * out_c * (in_c / groups) * kh * kw`` (bias ignored);
* attention: ``scores + weighted sum = 2 * H * n_queries * n_keys * head_dim`` (fvcore's count of the
  two ``matmul`` of the unfused path; :func:`fvcore_flops` registers the same count for
  ``aten::scaled_dot_product_attention``, which fvcore otherwise silently skips);
* ``LayerNorm`` / ``GroupNorm``: ``5`` FLOPs per element with an affine weight, ``4`` without;
* ``BatchNorm`` (counted in inference mode): ``2`` per element with affine, ``1`` without.

With these, DeiT-S/16 at 224 px reads 4.61 GFLOPs and DeiT-T 1.26 GFLOPs, and the analytic count of
:func:`vit_flops` equals :func:`fvcore_flops` of the same executed graph.

Three bugs of the reference implementation are deliberately avoided:

1. the token count is ``num_patches + num_prefix_tokens`` (197 for a 224 px /16 DeiT), not 192;
2. the patch embedding's input channels (3 for RGB) enter the convolution count;
3. a convolutional stem (LV-ViT: three conv+BN layers before the patch projection) is *added* to the
   projection's FLOPs, not overwritten by it - every conv/norm inside ``model.patch_embed`` is counted.

Any host with an adapter (:mod:`sttabt.hosts`) is counted layer by layer from its ``layer_cost``
(:func:`layer_flops`, :func:`encoder_flops`: BERT and RoBERTa encoders too); the patch embedding
and the ViT head are counted by :func:`vit_flops`.

Token pruning semantics: layer ``l`` reads ``n_in[l]`` tokens (its key/value set, prefix tokens
included) and emits ``n_out[l] <= n_in[l]`` tokens (its query set), with ``n_out[l] == n_in[l + 1]``.
The key/value projections and ``norm1`` run on ``n_in`` tokens; the query projection, attention output
projection, ``norm2`` and the MLP on ``n_out`` tokens; the attention matrix is ``n_out x n_in``.
"""
from .costs import GIGA, FlopsReport
from .analytic import ModelFlops, sttabt_flops, vit_flops, vit_flops_per_sample
from .fvcore_ref import fvcore_flops
from .layers import encoder_flops, layer_flops

__all__ = ["GIGA", "FlopsReport", "ModelFlops", "vit_flops", "vit_flops_per_sample", "sttabt_flops", "fvcore_flops",
           "encoder_flops", "layer_flops"]
