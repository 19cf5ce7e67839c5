"""Reinforced shards: what `python -m jaxsup.data.reinforce` stores beside a converted split, and its replay.

Layout of one reinforcement (DIR, by default `<data path>/<split>/reinforced`):

    DIR/shard-00000.array_record   one msgpack record per example of the split's shard-00000, same order;
                                   arrays as raw bytes, fields in `field_formats(info)`:
        "key" str, "box" int32 [K, 4] (left, top, w, h), "flip" uint8 [K],
        with RandAugment: "ra_ops" uint8 [K, L] (randaugment.NAMES ids), "ra_mag" float64 [K, L] (signed),
        classifier teachers (the ensemble's mean logits): "logits" dtype [K, k], "indices" uint16|int32 [K, k],
            "lse_rest" float32 [K];
        CLIP teachers: "zimg" dtype [K, T, E] (T teachers), "captions" [C] str, "ztxt" dtype [C, T, E]
    DIR/shard-00000.json           the shard's summary (written last: marks it complete)
    DIR/plan.json                  the command's settings (a resume must match them)
    DIR/reinforce.json             the finished reinforcement: settings, num_examples, bytes per example,
                                   and for CLIP each teacher's "log_t" (and SigLIP "bias")

Augmentation j of example i draws its crop box with `image_ops.sample_inception_box`,
its flip (`uniform() < flip_prob`) and its RandAugment layers (`randaugment.draw_layers`)
from `default_rng([crc32("reinforce"), seed, i, j])`; `render` makes the image the
teacher saw. "logits" are the top-k of the teachers' mean logits (raw), "lse_rest"
the logsumexp of the other V - k logits divided by the temperature (-inf at k = V),
so `jaxsup.losses.topk_kd` is exact on what is kept.

Replay: the preprocess op `reinforce:DIR` (before `keep`) picks augmentation
`example_rng(ex, "reinforce").integers(K)` — a pure function of (seed, epoch,
index) — renders that stored augmentation (bitwise the teacher's image) and adds
"reinforced_choice" [] int32 and the targets (OUTPUT_KEYS): classifiers
"reinforced_logits" [k] f32, "reinforced_indices" [k] int32, "reinforced_lse_rest" [] f32;
CLIP "reinforced_zimg" [T, E] f32, "text" (caption `example_rng(ex, "reinforce_caption").integers(C)`,
for the student's own tokenize op) and "reinforced_ztxt" [T, E] f32.
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
from jaxsup.data.host import randaugment
from jaxsup.data.host.image_ops import as_channels, crop_resize, example_name, get_image, sample_inception_box
from jaxsup.data.host.preprocess import RNG_KEY, Example, example_rng, register_op
from jaxsup.errors import ConfigError, DataError

INFO = "reinforce.json"
PLAN = "plan.json"
DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
OUTPUT_KEYS = ("reinforced_logits", "reinforced_indices", "reinforced_lse_rest", "reinforced_choice")
CLIP_OUTPUT_KEYS = ("reinforced_zimg", "reinforced_ztxt", "reinforced_choice")  # and "text"
CLASSIFIER_TARGETS = OUTPUT_KEYS[:3]  # what a KD loss reads
CLIP_TARGETS = CLIP_OUTPUT_KEYS[:2]
AUGMENT_KEYS = ("box", "flip", "ra_ops", "ra_mag")


# ----------------------------------------------------------------------------- augmentation parameters


def image_shape(spec: dict[str, Any]) -> tuple[int, int, int]:
    """(S, S, C): the rendered crop's shape."""
    return spec["size"], spec["size"], spec["channels"]


def draw_params(spec: dict[str, Any], index: int, width: int, height: int) -> dict[str, np.ndarray]:
    """The K augmentations of example `index` of a width x height image: {"box" int32 [K, 4] (left, top,
    w, h), "flip" uint8 [K]} and, with spec["randaugment"], {"ra_ops" uint8 [K, L], "ra_mag" float64 [K, L]}."""
    out: dict[str, list] = {"box": [], "flip": [], "ra_ops": [], "ra_mag": []}
    ra = spec.get("randaugment") or {}
    for j in range(spec["augmentations"]):
        rng = np.random.default_rng([zlib.crc32(b"reinforce"), spec["seed"] % 2**32, index, j])
        out["box"].append(sample_inception_box(rng, width, height, tuple(spec["scale"]), tuple(spec["ratio"])))
        out["flip"].append(rng.uniform() < spec["flip_prob"])
        if ra:
            ops, mags = randaugment.draw_layers(rng, ra["num_layers"], ra["magnitude"])
            out["ra_ops"].append(ops)
            out["ra_mag"].append(mags)
    formats = field_formats(spec)
    return {k: np.asarray(v, formats[k][0]) for k, v in out.items() if k in formats}


def augmentation(params: dict[str, np.ndarray], j: int) -> dict[str, np.ndarray]:
    """Augmentation j of draw_params' (or a record's) [K, ...] parameters."""
    return {k: params[k][j] for k in AUGMENT_KEYS if k in params}


def render(image: Any, aug: dict[str, np.ndarray], spec: dict[str, Any], where: str) -> np.ndarray:
    """`image` (bytes or uint8 [H, W, C]) cropped to aug["box"], resized to spec["size"], flipped if
    aug["flip"], RandAugmented by aug["ra_ops"] / ["ra_mag"] if present -> uint8 [size, size, C]
    (the host ops `inception_crop`, `flip_lr` and `randaugment`)."""
    size = spec["size"]
    out = crop_resize(image, tuple(int(v) for v in aug["box"]), (size, size), spec["channels"], where,
                      bool(spec["antialias"]))
    out = np.ascontiguousarray(out[:, ::-1]) if aug["flip"] else out
    if "ra_ops" in aug:
        rgb = randaugment.apply_layers(as_channels(out, 3, where), aug["ra_ops"], aug["ra_mag"])
        out = as_channels(rgb, spec["channels"], where)
        out = out[..., None] if out.ndim == 2 else out
    return out


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


def field_formats(spec: dict[str, Any]) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """{field: (stored dtype, shape)} of a record (-1: the example's caption count C)."""
    k_aug, value = spec["augmentations"], DTYPES[spec["dtype"]]
    out: dict[str, tuple[Any, tuple[int, ...]]] = {"box": (np.int32, (k_aug, 4)), "flip": (np.uint8, (k_aug,))}
    if spec.get("randaugment"):
        layers = spec["randaugment"]["num_layers"]
        out.update(ra_ops=(np.uint8, (k_aug, layers)), ra_mag=(np.float64, (k_aug, layers)))
    if spec.get("kind", "classifier") == "clip":
        t, e = len(spec["teachers"]), spec["embed_dim"]
        out.update(zimg=(value, (k_aug, t, e)), ztxt=(value, (-1, t, e)))
    else:
        k = spec["topk"]
        out.update(logits=(value, (k_aug, k)), indices=(index_dtype(spec["num_classes"]), (k_aug, k)),
                   lse_rest=(np.float32, (k_aug,)))
    return out


def encode(fields: dict[str, Any], spec: dict[str, Any]) -> bytes:
    """One example's sidecar record: "key", ("captions"), and field_formats' arrays as raw bytes."""
    record = {name: np.asarray(fields[name]).astype(dtype).tobytes() for name, (dtype, _) in field_formats(spec).items()}
    record["key"] = str(fields["key"])
    if "captions" in fields:
        record["captions"] = [str(c) for c in fields["captions"]]
    return shards.encode_record(record)


def decode(record: bytes, spec: dict[str, Any]) -> dict[str, Any]:
    """A sidecar record -> {"key", ("captions"), arrays [K, ...]}: stored floats as float32 (RandAugment
    magnitudes float64), indices int32."""
    raw = shards.decode_record(record)
    out = {k: raw[k] for k in ("key", "captions") if k in raw}
    for name, (dtype, shape) in field_formats(spec).items():
        array = np.frombuffer(raw[name], dtype).reshape(shape)
        if name == "indices":
            array = array.astype(np.int32)
        elif name in ("logits", "lse_rest", "zimg", "ztxt"):
            array = array.astype(np.float32)
        out[name] = array
    return out


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


def targets(rec: dict[str, Any], choice: int, ex: Example) -> dict[str, Any]:
    """The stored targets of augmentation `choice` (and, for CLIP, of a caption chosen by the example's key)."""
    if "zimg" not in rec:
        return {"reinforced_logits": rec["logits"][choice], "reinforced_indices": rec["indices"][choice],
                "reinforced_lse_rest": rec["lse_rest"][choice]}
    caption = int(example_rng(ex, "reinforce_caption").integers(len(rec["captions"])))
    return {"reinforced_zimg": rec["zimg"][choice], "text": rec["captions"][caption],
            "reinforced_ztxt": rec["ztxt"][caption]}


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
    image = render(get_image(ex, "reinforce"), augmentation(rec, choice), side.info, where)
    return {**ex, "image": image, **targets(rec, choice, ex), "reinforced_choice": np.int32(choice)}


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


def check_replayed(ops: Any, directory: str, where: str = "config.reinforced") -> dict[str, Any]:
    """DIR's info when `ops` (config.data.preprocess) replays it with "reinforce:DIR"; ConfigError otherwise."""
    info = read_info(directory)
    replayed = replay_dir(ops)
    if not replayed or os.path.abspath(replayed) != os.path.abspath(directory):
        raise ConfigError(f"{where}={directory!r} needs config.data.preprocess to replay it with "
                          f"'reinforce:{directory}' (has {tuple(ops)}).")
    return info
