"""Rules between two parameter layouts and the one function that applies them.

A Rule maps a tuple of our flat keys to a tuple of theirs, with a transform each
way; `apply_rules` runs a list of rules over a flat dict in either direction and
raises one CheckpointError naming every missing and unexpected key.

Transforms (ours = flax, theirs = PyTorch):
  linear  torch weight [out, in]        <-> flax kernel [in, out]
  conv    torch weight [O, I, p, p]     <-> flax kernel [p, p, I, O]
  qkv     torch packed [n*D, D] / [n*D] <-> n flax kernels [D, H, D/H] / biases [H, D/H]
  out     torch weight [D, H*dh]        <-> flax kernel [H, dh, D]
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import numpy as np

from jaxsup.errors import CheckpointError

Arrays = tuple[np.ndarray, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
    """ours <-> theirs, with `to_ours(*theirs) -> ours` and `to_theirs(*ours) -> theirs`."""

    ours: tuple[str, ...]
    theirs: tuple[str, ...]
    to_ours: Callable[..., Arrays]
    to_theirs: Callable[..., Arrays]


def same(ours: str, theirs: str) -> Rule:
    """Copied as is."""
    return Rule((ours,), (theirs,), lambda x: (x,), lambda x: (x,))


def linear(ours: str, theirs: str) -> Rule:
    """flax kernel [in, out] <-> torch weight [out, in]."""
    return Rule((ours,), (theirs,), lambda w: (w.T,), lambda k: (k.T,))


def conv(ours: str, theirs: str) -> Rule:
    """flax conv kernel [p, p, I, O] <-> torch conv weight [O, I, p, p]."""
    return Rule((ours,), (theirs,), lambda w: (w.transpose(2, 3, 1, 0),), lambda k: (k.transpose(3, 2, 0, 1),))


def scalar(ours: str, theirs: str) -> Rule:
    """flax [1] <-> torch [] (logit scale, logit bias)."""
    return Rule((ours,), (theirs,), lambda x: (np.reshape(x, (1,)),), lambda x: (np.reshape(x, ()),))


def leading_one(ours: str, theirs: str) -> Rule:
    """flax [1, N, D] <-> torch [N, D] (position embeddings)."""
    return Rule((ours,), (theirs,), lambda x: (x[None],), lambda x: (x[0],))


def packed_heads(ours: tuple[str, ...], theirs: str, heads: int, bias: bool) -> Rule:
    """n flax projections (kernels [D, H, dh] or biases [H, dh]) <-> one packed torch tensor."""

    def to_ours(packed):
        parts = np.split(packed, len(ours), axis=0)
        if bias:
            return tuple(p.reshape(heads, -1) for p in parts)
        return tuple(p.T.reshape(p.shape[1], heads, -1) for p in parts)

    def to_theirs(*parts):
        if bias:
            return (np.concatenate([p.reshape(-1) for p in parts]),)
        return (np.concatenate([p.reshape(p.shape[0], -1).T for p in parts], axis=0),)

    return Rule(ours, (theirs,), to_ours, to_theirs)


def attention_out(ours: str, theirs: str, heads: int) -> Rule:
    """flax out kernel [H, dh, D] <-> torch out weight [D, H*dh]."""
    return Rule(
        (ours,), (theirs,),
        lambda w: (w.T.reshape(heads, -1, w.shape[0]),),
        lambda k: (k.reshape(-1, k.shape[-1]).T,),
    )


def attention(ours: str, theirs: str, heads: int, qkv: str, out: str, q: str = "", kv: str = "") -> list[Rule]:
    """A flax MultiHeadDotProductAttention at `ours` <-> torch attention at `theirs`.

    Either one packed `qkv` (nn.MultiheadAttention's in_proj_, timm's qkv.) or a
    separate `q` and packed `kv` (timm's attention pool); `out` names the output
    projection. qkv / q / kv / out are name stems: "<stem>weight", "<stem>bias".
    """
    names = [f"{ours}/{n}" for n in ("query", "key", "value")]
    groups = [(names, qkv)] if qkv else [(names[:1], q), (names[1:], kv)]
    rules = []
    for group, stem in groups:
        rules.append(packed_heads(tuple(f"{n}/kernel" for n in group), f"{theirs}{stem}weight", heads, False))
        rules.append(packed_heads(tuple(f"{n}/bias" for n in group), f"{theirs}{stem}bias", heads, True))
    rules.append(attention_out(f"{ours}/out/kernel", f"{theirs}{out}weight", heads))
    rules.append(same(f"{ours}/out/bias", f"{theirs}{out}bias"))
    return rules


def layer_norm(ours: str, theirs: str) -> list[Rule]:
    """flax LayerNorm scale/bias <-> torch weight/bias."""
    return [same(f"{ours}/scale", f"{theirs}.weight"), same(f"{ours}/bias", f"{theirs}.bias")]


def dense(ours: str, theirs: str) -> list[Rule]:
    """flax Dense kernel/bias <-> torch Linear weight/bias."""
    return [linear(f"{ours}/kernel", f"{theirs}.weight"), same(f"{ours}/bias", f"{theirs}.bias")]


def _fmt(flat: dict[str, np.ndarray], keys: Iterable[str], limit: int = 12) -> str:
    keys = list(keys)
    shown = [f"{k} {tuple(np.shape(flat[k]))}" if k in flat else k for k in keys[:limit]]
    return ", ".join(shown) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def apply_rules(rules: list[Rule], flat: dict[str, np.ndarray], to: str, where: str) -> dict[str, np.ndarray]:
    """Runs `rules` over `flat` towards "ours" or "theirs"; every source key must be used once.

    Raises CheckpointError naming each missing source key and each unexpected one (with its shape).
    """
    missing, out, used = [], {}, set()
    for rule in rules:
        src, dst, fn = (rule.theirs, rule.ours, rule.to_ours) if to == "ours" else (rule.ours, rule.theirs, rule.to_theirs)
        absent = [k for k in src if k not in flat]
        if absent:
            missing.extend(absent)
            continue
        try:
            values = fn(*(flat[k] for k in src))
        except ValueError as e:  # a reshape the shapes do not allow
            raise CheckpointError(f"{where}: cannot convert {_fmt(flat, src)} to {list(dst)}: {e}") from None
        out.update(zip(dst, values))
        used.update(src)
    unexpected = [k for k in flat if k not in used]
    problems = []
    if missing:
        problems.append(f"missing keys: {_fmt(flat, missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_fmt(flat, unexpected)}")
    if problems:
        raise CheckpointError(f"{where} does not have the expected layout: " + " | ".join(problems))
    return out


def check_against(
    converted: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], origin: dict[str, str], where: str
) -> None:
    """CheckpointError naming each key the model needs but `converted` lacks, each extra key, and
    each shape mismatch (checkpoint shape vs model shape, with the checkpoint's own key name)."""
    name = lambda k: f"{k} (from {origin[k]})" if origin.get(k, k) != k else k  # noqa: E731
    missing = [f"{k} {tuple(expected[k])}" for k in expected if k not in converted]
    extra = [f"{name(k)} {tuple(converted[k].shape)}" for k in converted if k not in expected]
    shapes = [
        f"{name(k)}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k])}"
        for k in converted if k in expected and tuple(converted[k].shape) != tuple(expected[k])
    ]
    problems = []
    for label, items in (("missing for the model", missing), ("not in the model", extra), ("shape mismatch", shapes)):
        if items:
            problems.append(f"{label}: " + "; ".join(items[:12]) + (f" ... ({len(items)} in all)" if len(items) > 12 else ""))
    if problems:
        raise CheckpointError(f"{where} does not match the model: " + " | ".join(problems))


def origins(rules: list[Rule]) -> dict[str, str]:
    """our key -> the source key(s) it comes from, for error messages."""
    return {o: "+".join(rule.theirs) for rule in rules for o in rule.ours}
