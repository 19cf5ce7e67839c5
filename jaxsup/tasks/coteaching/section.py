"""Config of task "coteaching" (two networks teach each other on noisy labels); no JAX here."""
from jaxsup.config_fields import Declaration, Field, augment_fields
from jaxsup.config_ranges import FRACTION, OPEN_FRACTION, Range

DECLARATION = Declaration(task="coteaching", reads=("label_noise", "coteaching"), sections={
    "label_noise": dict(
        rate=Field(0.0, "fraction of training labels corrupted", OPEN_FRACTION),
        kind=Field("symmetric", '"symmetric" | "pair"'),
        seed=Field(0, "seed of the corruption (a pure function of seed and example index)"),
    ),
    "coteaching": dict(
        forget_rate=Field(-1.0, "fraction of large-loss rows each net drops; negative: label_noise.rate",
                          Range(high=1.0, high_open=True)),
        gradual_frac=Field(0.2, "fraction of total_steps over which the forget rate ramps up", FRACTION),
        feature_dropout=Field(0.0, "dropout on the features while training", OPEN_FRACTION),
        dropout_kind=Field("dropout", '"dropout" | "nested"'),
        **augment_fields(),
    ),
})
