"""The BERT-family host: kept here for its public names; the adapter lives in :mod:`sttabt.hosts.bert`."""
from sttabt.hosts.bert import (PREFIXES, SEQUENCE_CLASSIFIERS, BertAdapter, attention_logits,  # noqa: F401
                               attention_output, check_layers, embed, feed_forward, key_bias, merge_heads,
                               num_heads, probs_dropout, query_key_value)
