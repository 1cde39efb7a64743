"""ltp_nlp: token pruning for BERT-family encoders (LTP, and STTABT's pruners on text).

In progress: the package exists so that the layout is in place; its models arrive with the ltp_nlp
issue.
"""
import sttabt_compat

sttabt_compat.ensure_torchvision_ops()  # before transformers imports torchvision
