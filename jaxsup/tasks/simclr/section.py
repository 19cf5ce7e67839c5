"""Config of task "simclr" (SimCLR / CACR self-supervised pre-training); no JAX here."""
from jaxsup.config_fields import Declaration, Field, contrastive_fields
from jaxsup.config_ranges import POSITIVE, Range

DECLARATION = Declaration(task="simclr", reads=("simclr",), sections={"simclr": dict(
    loss=Field("nt_xent", '"nt_xent" (SimCLR; K > 2 views: mean over view pairs) | "cacr"'),
    views=Field(2, "K augmented views per image", Range(2, integer=True)),
    tau=Field(0.1, "NT-Xent temperature", POSITIVE),
    reduction=Field("mean", '"mean" over the 2N views | "simclr" (official SimCLR\'s sum, twice the mean)'),
    cacr=dict(t_pos=Field(1.0, "CACR attraction temperature", POSITIVE),
              t_neg=Field(1.0, "CACR repulsion temperature", POSITIVE),
              alpha=Field(1.0, "CACR attraction weight"),
              beta=Field(1.0, "CACR repulsion weight")),
    augment=Field({}, "kwargs of simclr_augment (crop_scale, flip, jitter_strength, blur_prob, ...)"),
    head=Field({}, "kwargs of SimCLRHead (num_layers, hidden_dim, output_dim, use_bn)"),
    **contrastive_fields(),
)})
