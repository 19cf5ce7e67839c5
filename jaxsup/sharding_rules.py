"""Named partition-rule presets: `config.partition_rules = ("fsdp_tp",)` (by name,
so configs import nothing), expanded by `jaxsup.sharding.resolve_rules`.

    c.partition_rules = ("fsdp_tp",)        # mesh (("data", -1), ("model", 2))

Each function returns a tuple of `(regex, tactic)` rules for
`jaxsup.sharding.tree_shardings` (matched with `re.search` on the full state
path, first match wins). The patterns end in the parameter's own name, so they
match both "params/img/encoder/.../query/kernel" and the optimizer's mirrors
"opt_state/1/0/mu/img/encoder/.../query/kernel": an Adam moment is sharded
like its weight.

Parameter names covered (jaxsup/models/transformer.py, vit.py, text.py,
two_tower.py):
  attention    .../MultiHeadDotProductAttention_0/{query,key,value}/kernel [D, H, D/H], bias [H, D/H]
               .../MultiHeadDotProductAttention_0/out/kernel [H, D/H, D], bias [D]
  MLP          .../MlpBlock_0/Dense_0/kernel [D, M], bias [M]; .../MlpBlock_0/Dense_1/kernel [M, D]
  other        embedding/kernel (patch conv) [p, p, C, D], token_embedding/embedding [V, D],
               pos_embedding [1, N, D], pre_logits, head, img_proj, txt_proj kernels [D, E]
  small        LayerNorm scale/bias, biases, cls [1, 1, D], t, b: always replicated.
"""
from __future__ import annotations

from typing import Any

from jaxsup.errors import ConfigError

# Weight matrices (any kernel, token/positional embedding tables).
LARGE = r"(kernel|embedding)$"
ATTN = r"MultiHeadDotProductAttention_0/"
ATTN_QKV_KERNEL = ATTN + r"(query|key|value)/kernel$"
ATTN_QKV_BIAS = ATTN + r"(query|key|value)/bias$"
ATTN_OUT_KERNEL = ATTN + r"out/kernel$"
MLP_IN_KERNEL = r"MlpBlock_0/Dense_0/kernel$"
MLP_IN_BIAS = r"MlpBlock_0/Dense_0/bias$"
MLP_OUT_KERNEL = r"MlpBlock_0/Dense_1/kernel$"

Rules = tuple[tuple[str, Any], ...]


def data_parallel() -> Rules:
    """Every parameter (and optimizer state) replicated on every device."""
    return ((r".*", "replicate"),)


def fsdp(axis: str = "data") -> Rules:
    """ZeRO-3 style: each weight matrix split over `axis` on its largest divisible dim.

    Biases, norms and scalars stay replicated (splitting them saves nothing
    and costs a gather each). A matrix with no dim divisible by the axis size
    stays replicated (see `jaxsup.sharding._fsdp_spec`).
    """
    return ((LARGE, f"fsdp:{axis}"), (r".*", "replicate"))


def fsdp_tp(data_axis: str = "data", model_axis: str = "model") -> Rules:
    """Megatron tensor parallelism over `model_axis` plus FSDP over `data_axis`.

    Attention q/k/v kernels [D, H, D/H] split heads over `model_axis` and D over
    `data_axis`; the attention-out kernel [H, D/H, D] splits heads (its input
    dim) over `model_axis`. MLP-in [D, M] splits M over `model_axis`, MLP-out
    [M, D] splits its input M. So each block needs one all-reduce per branch
    over `model_axis`. The q/k/v and MLP-in biases follow their output split.
    Every other weight matrix is FSDP over `data_axis`; the rest replicated.
    Requires num_heads and mlp_dim divisible by the model axis and the width D
    divisible by the data axis (jaxsup.sharding raises naming the parameter).
    """
    d, m = data_axis, model_axis
    return (
        (ATTN_QKV_KERNEL, (d, m, None)),
        (ATTN_QKV_BIAS, (m, None)),
        (ATTN_OUT_KERNEL, (m, None, d)),
        (MLP_IN_KERNEL, (d, m)),
        (MLP_IN_BIAS, (m,)),
        (MLP_OUT_KERNEL, (m, d)),
        (LARGE, f"fsdp:{d}"),
        (r".*", "replicate"),
    )


PRESETS = {"data_parallel": data_parallel, "fsdp": fsdp, "fsdp_tp": fsdp_tp}


def preset(name: str, **kwargs: str) -> Rules:
    """The preset called `name` ("data_parallel" | "fsdp" | "fsdp_tp") with its axis kwargs."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown sharding preset {name!r}; expected one of {sorted(PRESETS)}.")
    return PRESETS[name](**kwargs)
