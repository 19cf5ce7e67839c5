"""The teachers of `python -m jaxsup.data.reinforce`: loading them and running them on crops and captions.

A teacher is a jaxsup run's workdir (model from its config.json, weights from
its latest or `step` checkpoint) or a public checkpoint "FORMAT:PATH"
(open_clip / big_vision / hf, `jaxsup.interop`) whose model comes from a jaxsup
config (`config`, as `python -m jaxsup.eval --config C --init FORMAT:PATH`).
Its kind follows from its model: "clip" for a two_tower (image and text
embeddings), "classifier" otherwise (logits). Several teachers must share a
kind (and, for classifiers, their classes; for CLIP, their embedding width).
"""
from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from jaxsup import checkpoint, registry
from jaxsup.data.host import reinforce_store as store
from jaxsup.data.host.image_ops import op_args
from jaxsup.data.loader import pipeline
from jaxsup.data.text.tokenizer import get_tokenizer, with_tokenizer_vocab
from jaxsup.errors import ConfigError
from jaxsup.interop import convert
from jaxsup.interop.convert import is_public_checkpoint as is_public

CLIP_MODEL = "two_tower"


def teacher_config(teacher: dict[str, Any]) -> dict[str, Any]:
    """The teacher's config as a dict: its run's config.json, or its --teacher-config."""
    if teacher["config"]:
        from jaxsup.config import load_config

        return load_config(teacher["config"]).to_dict()
    saved = checkpoint.read_run_config(teacher["path"])
    if saved is None:
        raise ConfigError(f"--teacher {teacher['path']!r} has no config.json (not a jaxsup run's workdir); a public "
                          "checkpoint FORMAT:PATH needs --teacher-config CONFIG.")
    return saved


def caption_tokenizer(saved: dict[str, Any], where: str) -> dict[str, Any]:
    """{"tokenizer", "max_len"} of the "tokenize:" op the teacher's config trained with."""
    for op in (saved.get("data") or {}).get("preprocess") or ():
        name, _, arg = str(op).partition(":")
        if name == "tokenize":
            kw = op_args("tokenize", arg, {"max_len": 48, "tokenizer": "bytes", "key": "text"})
            return {"tokenizer": kw["tokenizer"], "max_len": kw["max_len"]}
    raise ConfigError(f"{where}: the CLIP teacher's config has no 'tokenize:' op in data.preprocess; its captions "
                      "cannot be tokenized as it was trained.")


def describe(teacher: dict[str, Any]) -> dict[str, Any]:
    """teacher with "kind", "model_name", "model" (kwargs) and, for CLIP, "loss" and "tokenize"."""
    saved = teacher_config(teacher)
    where = f"--teacher {teacher['path']!r}"
    name, kwargs = saved.get("model_name"), dict(saved.get("model") or {})
    if name == CLIP_MODEL:
        clip = saved.get("clip") or {}
        kwargs = {**kwargs, "loss": clip.get("loss", "softmax"), **with_tokenizer_vocab(kwargs, clip.get("tokenizer", ""))}
        return {**teacher, "kind": "clip", "model_name": name, "model": kwargs,
                "tokenize": caption_tokenizer(saved, where)}
    return {**teacher, "kind": "classifier", "model_name": name, "model": kwargs}


def build(teacher: dict[str, Any]) -> Any:
    try:
        return registry.get("model", teacher["model_name"])(**teacher["model"])
    except TypeError as err:
        raise ConfigError(f"--teacher {teacher['path']!r}: its model rejects its config: {err}") from err


def abstract_outputs(model: Any, kind: str, image_shape: tuple[int, ...]) -> tuple[Any, Any]:
    """(output ShapeDtypeStruct: logits [1, V] or zimg [1, E], variables ShapeDtypeStructs) on one image."""
    import jax

    image = jax.ShapeDtypeStruct((1, *image_shape), np.float32)
    if kind == "clip":
        tokens = jax.ShapeDtypeStruct((1, 4), np.int32)
        (zimg, _, _), variables = jax.eval_shape(
            lambda x, t: model.init_with_output(jax.random.key(0), x, t, train=False), image, tokens)
        return zimg, variables
    (logits, _), variables = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False),
                                            image)
    return logits, variables


def restore(teacher: dict[str, Any], abstract: Any) -> Any:
    """The teacher's variables (params, and model state from its run's task_state)."""
    if is_public(teacher["path"]):
        if set(abstract) != {"params"}:
            raise ConfigError(f"--teacher {teacher['path']!r}: a public checkpoint gives parameters only, but its "
                              f"model also has {sorted(set(abstract) - {'params'})} (e.g. BatchNorm statistics).")
        return {"params": convert.load_public(teacher["path"], abstract["params"])}
    step = None if teacher["step"] < 0 else teacher["step"]
    return {name: checkpoint.restore_subtree(
        teacher["path"], teacher["params_subtree"] if name == "params" else f"{teacher['state_subtree']}/{name}",
        target=checkpoint.abstract_tree(tree), step=step) for name, tree in abstract.items()}


def padded_batches(fn: Callable, inputs: np.ndarray, batch: int) -> tuple[np.ndarray, ...]:
    """fn over `inputs` [N, ...] in batches of `batch` (the last padded: one compiled shape) -> outputs [N, ...]."""
    import jax

    outs = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
        outs.append([np.asarray(r)[:len(chunk)] for r in jax.device_get(fn(padded))])
    return tuple(np.concatenate(parts) for parts in zip(*outs))


class Teacher:
    """One loaded teacher: `images(uint8 [N, S, S, C])` and, for CLIP, `texts(captions)` and `scale()`."""

    def __init__(self, teacher: dict[str, Any], spec: dict[str, Any]):
        import jax

        self.kind, self.spec = teacher["kind"], spec
        model = build(teacher)
        _, abstract = abstract_outputs(model, self.kind, store.image_shape(spec))
        variables = restore(teacher, abstract)
        self.device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        if self.kind == "clip":
            self.tokenizer = get_tokenizer(teacher["tokenize"]["tokenizer"])
            self.max_len = teacher["tokenize"]["max_len"]
            self._image = jax.jit(lambda x: (model.apply(variables, x, None, train=False)[0],))
            self._text = jax.jit(lambda t: (model.apply(variables, None, t, train=False)[1],))
            self._scale = jax.jit(lambda: model.apply(variables, None, None)[2])
        else:
            self._image = jax.jit(lambda x: (model.apply(variables, x, train=False)[0],))

    def images(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, C] -> logits [N, V] or zimg [N, E] f32 (images made float as the train pipeline does)."""
        def forward(batch: np.ndarray):
            return self._image(pipeline.to_global({"image": batch}, self.device)["image"])

        return padded_batches(forward, images, self.spec["batch_size"])[0]

    def texts(self, captions: list[str]) -> np.ndarray:
        """captions (N strings) -> ztxt [N, E] f32."""
        tokens = np.asarray(self.tokenizer.encode(list(captions), self.max_len), np.int32)
        return padded_batches(self._text, tokens, self.spec["batch_size"])[0]

    def scale(self) -> dict[str, float]:
        """{"log_t"} (and "bias" for SigLIP) of the teacher's similarity logits."""
        out = self._scale()
        return {k: float(np.asarray(out[k])) for k in ("log_t", "bias") if k in out}


_LOADED: dict[str, list[Teacher]] = {}


def load(spec: dict[str, Any]) -> list[Teacher]:
    """spec's teachers, loaded once per process."""
    key = json.dumps(spec["teachers"], sort_keys=True)
    if key not in _LOADED:
        _LOADED[key] = [Teacher(t, spec) for t in spec["teachers"]]
    return _LOADED[key]


def image_targets(spec: dict[str, Any], images: np.ndarray) -> dict[str, np.ndarray]:
    """The stored fields of K crops [N, S, S, C]: classifiers -> the ensemble's (mean logits') top-k
    {"logits" [N, k], "indices" [N, k], "lse_rest" [N]}; CLIP -> {"zimg" [N, T, E]}."""
    outs = [t.images(images) for t in load(spec)]
    if spec["kind"] == "clip":
        return {"zimg": np.stack(outs, axis=1)}
    logits, indices, rest = store.topk_targets(np.mean(np.stack(outs), axis=0), spec["topk"], spec["temperature"])
    return {"logits": np.asarray(logits), "indices": np.asarray(indices), "lse_rest": np.asarray(rest)}


def text_targets(spec: dict[str, Any], captions: list[str]) -> np.ndarray:
    """ztxt [N, T, E] of N captions under each CLIP teacher."""
    return np.stack([t.texts(captions) for t in load(spec)], axis=1)
