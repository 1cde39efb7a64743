"""``LTPConfig``: a BERT-family encoder's own configuration plus the token-pruning fields.

Every field of the host configuration (``hidden_size``, ``num_hidden_layers``, ...) passes through
unchanged, so a fine-tuned checkpoint's ``config.json`` becomes an LTP configuration by the
reference's manual edit (``model_type: "ltp"``, ``architectures: ["LTPForSequenceClassification"]``
and the prune fields) or by ``tools/convert_to_ltp.py``. ``host_type`` names the host (``bert``,
``roberta`` or ``ibert``); a hand-edited config that lacks it gets it from the checkpoint's weight
names when the model is loaded (see :func:`ltp_nlp.modeling_ltp.infer_host_type`).
"""
from __future__ import annotations

from transformers import CONFIG_MAPPING, PretrainedConfig

from .config_checks import HOST_TYPES, SCORING_MODES, check_field, field_checks  # noqa: F401  (re-exported)

PRUNE_MODES = {
    "none": "no pruning: the host as it is",
    "absolute_threshold": "LTP: learned per-layer thresholds on the attention a token receives",
    "topk": "baseline: per-layer keep rates (1 for the first layers, then linear down to token_keep_rate)",
    "sttabt_concrete": "STTABT concrete masks with learnable per-layer p-logits, from the scout's attention",
    "sttabt_abt": "STTABT attention back-tracking top-k on the scout's attention (training-free)",
    "sttabt_abt_oracle": "attention back-tracking top-k on the host's own attention (an oracle)",
}
ONLINE_MODES = ("absolute_threshold", "topk")      # decide after each layer, from the host's attention
PLANNED_MODES = ("sttabt_concrete", "sttabt_abt", "sttabt_abt_oracle")  # decide every layer up front
SOFT_MODES = ("absolute_threshold", "sttabt_concrete")  # the modes that have a soft (training) mask
SCOUT_MODES = ("sttabt_concrete", "sttabt_abt")    # the modes that run an approximation network
FIELD_CHECKS = field_checks(PRUNE_MODES)  # every LTP setting's check (ltp_nlp.config_checks)
LTP_FIELDS = ("host_type", "prune_mode", "final_token_threshold", "scoring_mode", "token_keep_rate",
              "score_length", "regularise_padding", "approx_factor", "p_logit")
REFERENCE_MAX_LENGTH = 128  # the reference pads to 128 tokens: its scores are divided by 128


class LTPConfig(PretrainedConfig):
    """Configuration of :class:`~ltp_nlp.LTPModel` and :class:`~ltp_nlp.LTPForSequenceClassification`.

    Args:
        host_type: ``"bert"``, ``"roberta"`` or ``"ibert"`` (float mode); ``None``: infer on load.
        prune_mode: one of :data:`PRUNE_MODES`.
        final_token_threshold: LTP threshold of the last layers; layer ``i`` (0-based) of ``L`` starts
            at ``final_token_threshold * i / L`` (the reference code's rule) plus a learned delta.
        scoring_mode: ``"mean"`` divides the attention a token receives by ``heads * score_length``
            (fixed, so thresholds mean the same whatever the batch's length); ``"mean_norm"`` divides
            by ``heads *`` the sentence's true length.
        token_keep_rate: last-layer keep rate of ``topk``; keep ratio of every layer for ``sttabt_abt*``.
        score_length: the fixed length of ``"mean"`` scoring (128 in the reference).
        regularise_padding: LTP regulariser averaged over padding too, as if every batch were padded to
            ``score_length`` (the reference's biased variant: it padded every batch to 128).
        approx_factor: the STTABT scout is this many times thinner than the host.
        p_logit: STTABT concrete target: every layer's initial logit; target keep ``sigmoid(p_logit)``.
    """

    model_type = "ltp"
    keys_to_ignore_at_inference = ["counts", "mask_means", "pruning_loss", "plan"]

    def __init__(
        self,
        host_type: str | None = None,
        prune_mode: str = "none",
        final_token_threshold: float = 0.01,
        scoring_mode: str = "mean",
        token_keep_rate: float = 1.0,
        score_length: int = REFERENCE_MAX_LENGTH,
        regularise_padding: bool = False,
        approx_factor: int = 4,
        p_logit: float = 0.0,
        **kwargs,
    ):
        if kwargs.get("quant_mode"):
            raise ValueError("I-BERT's integer mode is not supported: set \"quant_mode\": false in config.json "
                             "(float mode, numerically RoBERTa)")
        if host_type is None and "quant_mode" in kwargs:
            host_type = "ibert"  # only I-BERT configurations carry quant_mode
        self.host_type = host_type
        self.prune_mode = prune_mode
        self.final_token_threshold = final_token_threshold
        self.scoring_mode = scoring_mode
        self.token_keep_rate = token_keep_rate
        self.score_length = score_length
        self.regularise_padding = regularise_padding
        self.approx_factor = approx_factor
        self.p_logit = p_logit
        super().__init__(**kwargs)
        self.validate_pruning()
        if host_type is not None:
            self.fill_host_defaults()

    def __setattr__(self, name, value):
        """Every LTP setting is checked when it is set (``ltp_nlp.config_checks``): a bad value fails at
        construction, as a ``from_pretrained`` keyword override and when a ``config.json`` is read."""
        super().__setattr__(name, check_field(FIELD_CHECKS, name, value))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As transformers'; a bad LTP setting's error also names the folder it was read from."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except ValueError as err:
            if str(pretrained_model_name_or_path) in str(err):
                raise
            raise ValueError(f"{pretrained_model_name_or_path}: {err}") from None

    def fill_host_defaults(self) -> None:
        """Give every host field this config lacks the host's default (``initializer_range``, ...)."""
        for key, value in CONFIG_MAPPING[self.host_type]().to_dict().items():
            if not hasattr(self, key):
                setattr(self, key, value)

    def validate_pruning(self) -> None:
        """Raise ``ValueError`` naming the field, its value and the allowed values (every field is also
        checked when it is set; this catches values written straight into ``__dict__``)."""
        for name in FIELD_CHECKS:
            if name in self.__dict__:
                check_field(FIELD_CHECKS, name, self.__dict__[name])

    def host_config(self, host_type: str | None = None) -> PretrainedConfig:
        """The host's own configuration (``BertConfig``, ``RobertaConfig`` or ``IBertConfig``)."""
        host_type = host_type or self.host_type
        if host_type is None:
            raise ValueError("host_type is unknown: set \"host_type\" in config.json to one of "
                             f"{', '.join(HOST_TYPES)} (tools/convert_to_ltp.py does), or load the model "
                             "with from_pretrained, which reads it from the weight names")
        fields = {k: v for k, v in self.to_dict().items()
                  if k not in LTP_FIELDS and k not in ("model_type", "architectures", "transformers_version")}
        if host_type == "ibert":
            fields["quant_mode"] = False
        return CONFIG_MAPPING[host_type](**fields)
