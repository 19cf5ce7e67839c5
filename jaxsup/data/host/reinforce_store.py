"""Reinforced shards: what `python -m jaxsup.data.reinforce` stores beside a converted split, and its replay.

Layout of one reinforcement (DIR, by default `<data path>/<split>/reinforced`):

    DIR/shard-00000.array_record   one record per example of the split's shard-00000, same order:
                                   msgpack {"key": str, "box": int32 [K, 4] (left, top, w, h),
                                   "flip": uint8 [K], "logits": dtype [K, k], "indices": uint16|int32 [K, k],
                                   "lse_rest": float32 [K]} (arrays as raw bytes)
    DIR/shard-00000.json           the shard's summary (written last: marks it complete)
    DIR/plan.json                  the command's settings (a resume must match them)
    DIR/reinforce.json             the finished reinforcement: settings, num_examples, bytes per example

Augmentation j of example i (its position in the base split) draws its crop box
with `image_ops.sample_inception_box` and its flip (`uniform() < flip_prob`) from
`default_rng([crc32("reinforce"), seed, i, j])`; `render` makes the image the
teacher saw. "logits" are the teacher's top-k logits (raw), "lse_rest" the
logsumexp of the other V - k logits divided by the temperature (-inf at k = V),
so `jaxsup.losses.topk_kd` is exact on what is kept.

Replay: the preprocess op `reinforce:DIR` (before `keep`) picks augmentation
`example_rng(ex, "reinforce").integers(K)` — a pure function of (seed, epoch,
index) — renders that stored crop (bitwise the teacher's image) and adds
"reinforced_logits" [k] f32, "reinforced_indices" [k] int32,
"reinforced_lse_rest" [] f32 and "reinforced_choice" [] int32 to the example.
The split must be the reinforced one or a leading slice of it (record i is
example i; the record's key is checked against the example's).
"""
from __future__ import annotations

import functools
import json
import os
import threading
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxsup.data.datasets import shards
from jaxsup.data.host.image_ops import crop_resize, example_name, get_image, sample_inception_box
from jaxsup.data.host.preprocess import RNG_KEY, Example, example_rng, register_op
from jaxsup.errors import DataError

INFO = "reinforce.json"
PLAN = "plan.json"
DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
OUTPUT_KEYS = ("reinforced_logits", "reinforced_indices", "reinforced_lse_rest", "reinforced_choice")


# ----------------------------------------------------------------------------- augmentation parameters


def draw_params(spec: dict[str, Any], index: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes int32 [K, 4] (left, top, w, h), flips uint8 [K]) of example `index` of a width x height image."""
    boxes, flips = [], []
    for j in range(spec["augmentations"]):
        rng = np.random.default_rng([zlib.crc32(b"reinforce"), spec["seed"] % 2**32, index, j])
        boxes.append(sample_inception_box(rng, width, height, tuple(spec["scale"]), tuple(spec["ratio"])))
        flips.append(rng.uniform() < spec["flip_prob"])
    return np.asarray(boxes, np.int32), np.asarray(flips, np.uint8)


def render(image: Any, box: np.ndarray, flip: Any, spec: dict[str, Any], where: str) -> np.ndarray:
    """The crop `box` of `image` (bytes or uint8 [H, W, C]) resized to spec["size"], flipped if `flip`
    -> uint8 [size, size, C] (the ops `inception_crop` and `flip_lr` use)."""
    size = spec["size"]
    out = crop_resize(image, tuple(int(v) for v in box), (size, size), spec["channels"], where,
                      bool(spec["antialias"]))
    return np.ascontiguousarray(out[:, ::-1]) if flip else out


# ----------------------------------------------------------------------------- teacher targets


def topk_targets(teacher_logits: jax.Array, k: int, temperature: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(top-k logits [B, k] f32 (descending), their indices [B, k] int32, logsumexp(rest / T) [B]) of [B, V].

    The rest is -inf when k = V (jaxsup.losses.topk_kd reads these).
    """
    logits = jnp.asarray(teacher_logits, jnp.float32)
    v = logits.shape[-1]
    if not 1 <= k <= v:
        raise ValueError(f"k = {k} must lie in [1, V = {v}].")
    values, indices = jax.lax.top_k(logits, k)
    kept = jnp.zeros(logits.shape, bool).at[jnp.arange(logits.shape[0])[:, None], indices].set(True)
    rest = jax.nn.logsumexp(jnp.where(kept, -jnp.inf, logits / jnp.asarray(temperature, jnp.float32)), axis=-1)
    return values, indices.astype(jnp.int32), rest


def index_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.uint16 if num_classes <= 2**16 else np.int32)


def encode(key: str, boxes: np.ndarray, flips: np.ndarray, logits: np.ndarray, indices: np.ndarray,
           lse_rest: np.ndarray, spec: dict[str, Any]) -> bytes:
    """One example's sidecar record (arrays [K, ...] in their stored dtypes, as raw bytes)."""
    return shards.encode_record({
        "key": key, "box": boxes.astype(np.int32).tobytes(), "flip": flips.astype(np.uint8).tobytes(),
        "logits": np.asarray(logits, np.float32).astype(DTYPES[spec["dtype"]]).tobytes(),
        "indices": np.asarray(indices).astype(index_dtype(spec["num_classes"])).tobytes(),
        "lse_rest": np.asarray(lse_rest, np.float32).tobytes()})


def decode(record: bytes, spec: dict[str, Any]) -> dict[str, Any]:
    """A sidecar record -> {"key", "box" [K, 4], "flip" [K], "logits" [K, k] f32, "indices" [K, k] int32,
    "lse_rest" [K] f32}."""
    raw = shards.decode_record(record)
    n, k = spec["augmentations"], spec["topk"]
    return {"key": raw["key"], "box": np.frombuffer(raw["box"], np.int32).reshape(n, 4),
            "flip": np.frombuffer(raw["flip"], np.uint8),
            "logits": np.frombuffer(raw["logits"], DTYPES[spec["dtype"]]).reshape(n, k).astype(np.float32),
            "indices": np.frombuffer(raw["indices"], index_dtype(spec["num_classes"])).reshape(n, k).astype(np.int32),
            "lse_rest": np.frombuffer(raw["lse_rest"], np.float32)}


# ----------------------------------------------------------------------------- reading a reinforcement


def read_info(directory: str) -> dict[str, Any]:
    """DIR/reinforce.json; DataError naming the command that writes it."""
    path = os.path.join(directory, INFO)
    if not os.path.isfile(path):
        raise DataError(f"No finished reinforcement at {directory!r} (no {INFO}); write it with "
                        "`python -m jaxsup.data.reinforce DATA --teacher RUN --out DIR` (rerun it to finish).")
    with open(path) as f:
        return json.load(f)


class Sidecar:
    """The records of a reinforcement, opened lazily once per process (random access by example index)."""

    def __init__(self, directory: str):
        self.directory, self.info = directory, read_info(directory)
        self._source, self._lock = None, threading.Lock()

    def __len__(self) -> int:
        return self.info["num_examples"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise DataError(f"Example {index} is past the {len(self)} reinforced examples at {self.directory!r}.")
        with self._lock:
            if self._source is None:
                from array_record.python import array_record_data_source

                files = [os.path.join(self.directory, s["file"]) for s in self.info["shards"] if s["num_examples"]]
                self._source = array_record_data_source.ArrayRecordDataSource(files)
        return decode(self._source[int(index)], self.info)

    def __getstate__(self) -> dict[str, Any]:  # grain worker processes reopen the files
        return {"directory": self.directory, "info": self.info}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _source=None, _lock=threading.Lock())


@functools.lru_cache(maxsize=8)
def open_sidecar(directory: str) -> Sidecar:
    return Sidecar(os.path.abspath(directory))


def replay(ex: Example, side: Sidecar) -> Example:
    """`ex` with its image replaced by stored augmentation `example_rng(ex, "reinforce").integers(K)`
    and the stored targets added (see the module docstring)."""
    if RNG_KEY not in ex:
        raise DataError("reinforce: the op needs the pipeline's (seed, epoch, index) key (use it in "
                        "config.data.preprocess).")
    index, where = int(np.asarray(ex[RNG_KEY])[2]), example_name(ex)
    rec = side[index]
    if "key" in ex and str(ex["key"]) != rec["key"]:
        raise DataError(f"reinforce: {where} has key {str(ex['key'])!r} but record {index} of {side.directory!r} "
                        f"is {rec['key']!r}: train on the reinforced split ({side.info['split']!r}) or a "
                        "leading slice of it.")
    choice = int(example_rng(ex, "reinforce").integers(side.info["augmentations"]))
    image = render(get_image(ex, "reinforce"), rec["box"][choice], rec["flip"][choice], side.info, where)
    return {**ex, "image": image, "reinforced_logits": rec["logits"][choice],
            "reinforced_indices": rec["indices"][choice], "reinforced_lse_rest": rec["lse_rest"][choice],
            "reinforced_choice": np.int32(choice)}


@register_op("reinforce")
def reinforce_op(arg: str = "") -> Any:
    """"reinforce:DIR": replays a stored augmentation and adds its teacher targets (module docstring)."""
    if not arg:
        raise DataError("Preprocess 'reinforce' needs the reinforcement's folder: 'reinforce:DIR'.")
    side = open_sidecar(arg)
    return functools.partial(replay, side=side)


def replay_dir(ops: Any) -> str:
    """The DIR of the first "reinforce:DIR" op in a preprocess list, or ""."""
    for op in ops:
        name, _, arg = str(op).partition(":")
        if name == "reinforce":
            return arg
    return ""
