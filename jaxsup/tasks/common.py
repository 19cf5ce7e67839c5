"""Helpers shared by the tasks (tasks import this module, never each other's).

- models: `build_model`, `split_variables`, `apply_with_state` (the one way to
  apply a model with non-param collections such as BatchNorm statistics),
  `abstract_init`;
- `masked_mean`, `labelled_mask`, device augmentation by name (`augment_images`);
- `FrozenModel`: a model whose variables come from another run's checkpoint
  (distillation teachers, weak supervisors), described by a
  `jaxsup.config.teacher_spec()` section; `restore_warm_start` (pretrained
  weights from another run after a fresh init); `load_pretrained` (a public
  checkpoint "FORMAT:PATH" or a run, whole or a sub-tree);
- `ImageClassifier`: the base of the classification tasks.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxsup import checkpoint, registry, sharding
from jaxsup.data.device import augment
from jaxsup.errors import ConfigError
from jaxsup.interop import convert
from jaxsup.interop.convert import is_public_checkpoint  # noqa: F401 (used by tasks)
from jaxsup.losses.classification import classification_metrics
from jaxsup.losses.contrastive import CONTRASTIVE_IMPLS
from jaxsup.tasks.base import Batch, DataInfo, Task

Variables = dict[str, Any]
AUGMENTS = ("none", "crop", "simclr")


# ------------------------------------------------------------------ models
def build_model(name: str, kwargs: Any) -> nn.Module:
    """registry model `name` constructed from a ConfigDict/dict of kwargs."""
    cls = registry.get("model", name)
    kwargs = kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"Model {name!r} rejects config.model kwargs {sorted(kwargs)}: {err}") from err


def build_backbone(name: str, kwargs: Any) -> nn.Module:
    """registry model `name` with num_classes=None: images -> (features [B, D], out); the task adds heads."""
    kwargs = kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)
    return build_model(name, {**kwargs, "num_classes": None})


def split_variables(variables: Any) -> tuple[Any, Any]:
    """flax variables -> (params, the other collections e.g. batch_stats)."""
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables


def apply_with_state(model: nn.Module, params: Any, model_state: Variables, *args: Any, train: bool,
                     rngs: Any = None, **kwargs: Any) -> tuple[Any, Variables]:
    """model.apply with its non-param collections; returns (outputs, new model_state).

    With train=True the collections are mutable and come back updated;
    otherwise model_state comes back unchanged.
    """
    variables = {"params": params, **model_state}
    if train and model_state:
        outputs, new_state = model.apply(variables, *args, train=True, rngs=rngs, mutable=list(model_state), **kwargs)
        return outputs, dict(new_state)
    return model.apply(variables, *args, train=train, rngs=rngs, **kwargs), model_state


def abstract_init(model: nn.Module, example_images: Any) -> tuple[Any, Any, Variables]:
    """ShapeDtypeStructs of (outputs (logits, out), params, other collections) of an image model."""
    outputs, variables = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x, train=False), example_images
    )
    return (outputs, *split_variables(variables))


def num_outputs(model: nn.Module, example_images: Any) -> int:
    """Width of the logits [B, K] an image model returns."""
    (logits, _), _, _ = abstract_init(model, example_images)
    return int(logits.shape[-1])


# ------------------------------------------------------------ batch helpers
def masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of values [B] over rows with mask [B] == 1 (all rows if mask is None)."""
    values = values.astype(jnp.float32)
    if mask is None:
        return values.mean()
    return (values * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def labelled_mask(index: jax.Array, num_labelled: int) -> jax.Array:
    """[B] float: 1 where the example (position `index` [B] in the split) is among the first num_labelled."""
    return (index < num_labelled).astype(jnp.float32)


def leading_slice_count(config: Any, split: str, field: str, num_examples: Callable[[str], int]) -> int:
    """Length of `split`, which must be a leading slice "base[:n]" of the unsliced data.train_split."""
    base = config.data.train_split
    if "[" in base or not split.startswith(base + "[:"):
        raise ConfigError(
            f"{field}={split!r} must be a leading slice of data.train_split={base!r} (e.g. "
            f"'{base.split('[')[0]}[:10%]' with an unsliced train split): the labelled examples are the "
            "first ones of the split."
        )
    return num_examples(split)


def check_augment(name: str, where: str) -> None:
    """Raises ConfigError unless `name` is one of AUGMENTS."""
    if name not in AUGMENTS:
        raise ConfigError(f"{where}={name!r} is not one of {AUGMENTS}.")


def augment_images(rng: jax.Array, images: jax.Array, name: str, crop_scale: Any) -> jax.Array:
    """images [B, H, W, C] in [0, 1] -> augmented (same shape); "none" is the identity."""
    check_augment(name, "augment")
    if name == "crop":
        return augment.random_resized_crop(rng, images, scale=tuple(crop_scale))
    if name == "simclr":
        return augment.simclr_augment(rng, images, crop_scale=tuple(crop_scale), flip=False, blur_prob=0.0)
    return images


def check_contrastive_options(opts: Any, section: str, mesh) -> None:
    """Raises ConfigError for an unknown impl or a ring over an axis the mesh lacks."""
    if opts.impl not in CONTRASTIVE_IMPLS:
        raise ConfigError(f"Unknown config.{section}.impl {opts.impl!r}; expected one of {CONTRASTIVE_IMPLS}.")
    if opts.impl == "ring" and opts.axis not in mesh.axis_names:
        raise ConfigError(f"config.{section}.axis {opts.axis!r} is not a mesh axis {mesh.axis_names}.")


# ------------------------------------------------------------ frozen models
def check_run_path(path: str, what: str) -> str:
    """The absolute path of another run's directory; ConfigError if empty or missing."""
    if not path:
        raise ConfigError(f"{what} is empty: give another run's workdir or checkpoint directory.")
    if not os.path.isdir(path):
        raise ConfigError(f"{what} {path!r} does not exist (no such checkpoint directory).")
    return os.path.abspath(path)


def resolve_model(spec: Any, what: str) -> tuple[str, dict[str, Any]]:
    """(model_name, kwargs) from the spec, or from the run's config.json if model_name is ""."""
    if spec.model_name:
        model = spec.model
        return spec.model_name, model.to_dict() if hasattr(model, "to_dict") else dict(model)
    saved = checkpoint.read_run_config(spec.path)
    if saved is None:
        raise ConfigError(
            f"{what}.model_name is empty and the run at {spec.path!r} has no config.json to read "
            f"the model from: set {what}.model_name and {what}.model."
        )
    return saved["model_name"], dict(saved.get("model") or {})


class FrozenModel:
    """A registered image model whose variables come from another run's checkpoint.

    `load(mesh)` -> {"params", "model_state"} placed with the spec's partition
    rules; `apply(frozen, images)` -> (logits [B, K], out) in inference mode,
    gradient-stopped.
    """

    def __init__(self, spec: Any, example_images: Any, default_rules: Any = (), what: str = "distill.teacher"):
        self.spec = spec
        self.what = what
        self.path = check_run_path(spec.path, f"{what}.path")
        self.model_name, kwargs = resolve_model(spec, what)
        self.model = build_model(self.model_name, kwargs)
        (logits, out), self.abstract_params, self.abstract_state = abstract_init(self.model, example_images)
        self.rules = spec.partition_rules or default_rules
        self.num_outputs = int(logits.shape[-1])
        self.feature_dim = int(out["pre_logits"].shape[-1]) if "pre_logits" in out else None

    def check_classes(self, num_classes: int, student: str) -> None:
        """ConfigError unless the teacher's class count equals the student's `num_classes`."""
        if num_classes != self.num_outputs:
            raise ConfigError(
                f"Teacher {self.model_name!r} outputs {self.num_outputs} classes but the student {student!r} "
                f"outputs {num_classes}: teacher and student class counts must agree ({self.what}.model vs "
                "config.model num_classes).")

    def shardings(self, mesh: Mesh) -> dict[str, Any]:
        tree = {"params": self.abstract_params, "model_state": self.abstract_state}
        return sharding.tree_shardings(tree, self.rules, mesh)

    def load(self, mesh: Mesh) -> dict[str, Any]:
        """Restores params and every non-param collection onto the model's shardings."""
        shards = self.shardings(mesh)
        step = None if self.spec.step < 0 else int(self.spec.step)

        def read(subtree: str, abstract: Any, shardings: Any) -> Any:
            target = checkpoint.abstract_tree(abstract, shardings)
            return checkpoint.restore_subtree(self.path, subtree, target=target, step=step)

        params = read(self.spec.params_subtree, self.abstract_params, shards["params"])
        state = {name: read(f"{self.spec.state_subtree}/{name}", abstract, shards["model_state"][name])
                 for name, abstract in self.abstract_state.items()}
        return {"params": params, "model_state": state}

    def apply(self, frozen: dict[str, Any], images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        (logits, out), _ = apply_with_state(self.model, frozen["params"], frozen["model_state"], images, train=False)
        return jax.lax.stop_gradient((logits, out))


def restore_warm_start(cfg: Any, init_from: str, params: Any, task_state: Any) -> tuple[Any, Any]:
    """(params, task_state) with every top-level entry not in cfg.init_skip read from another run.

    cfg: a config.finetune section (init_subtree, init_state_subtree, init_step,
    init_skip); init_from: that run's checked path. Arrays land on the shardings
    of the given (abstract or placed) trees.
    """
    step = None if cfg.init_step < 0 else int(cfg.init_step)
    skip = set(cfg.init_skip)

    def read(subtree: str, tree: dict[str, Any]) -> dict[str, Any]:
        return {k: v if k in skip else checkpoint.restore_subtree(init_from, f"{subtree}/{k}", target=v, step=step)
                for k, v in tree.items()}

    if cfg.init_state_subtree:
        task_state = {name: read(f"{cfg.init_state_subtree}/{name}", coll) for name, coll in task_state.items()}
    return read(cfg.init_subtree, params), task_state


def load_pretrained(spec: str, params: Any, subtree: str = "", names: tuple[str, ...] = ()) -> Any:
    """`params` (placed) with entries replaced by pretrained ones, each onto its leaf's sharding.

    spec: a public checkpoint "FORMAT:PATH" (jaxsup.interop: shapes checked, image position
    embeddings resampled to the model's patch grid) or another run's workdir. subtree: where
    in that checkpoint the model's tree starts ("img": a CLIP image tower for a ViT); names:
    the top-level entries to load (e.g. ("img", "img_proj")), () for all.
    """
    chosen = {k: v for k, v in params.items() if not names or k in names}
    if not is_public_checkpoint(spec):
        root = "/".join(p for p in ("params", subtree.strip("/")) if p)
        path = check_run_path(spec, "init_from")
        return {**params, **{k: checkpoint.restore_subtree(path, f"{root}/{k}", target=v) for k, v in chosen.items()}}
    flat = convert.flatten(chosen)
    loaded = convert.flatten(convert.load_public(spec, chosen, subtree, tuple(names)))
    placed = {k: jax.device_put(v, flat[k].sharding) for k, v in loaded.items()}
    return {**params, **convert.nest(placed)}


# ------------------------------------------------------------ classifier base
class ImageClassifier(Task):
    """`config.model_name` + `config.model`: images [B, H, W, C] -> logits [B, K], CE on "label" [B].

    The base of the classification tasks (supervised, finetune, pskd,
    pseudo_label, weak_to_strong): they change the loss, not the model. A
    subclass that sets `warm_start_section = "finetune"` starts from the run
    named by config.finetune.init_from (`restore_warm_start`).
    """

    warm_start_section: str | None = None

    def __init__(self, config: Any, mesh: Mesh, data: DataInfo):
        super().__init__(config, mesh, data)
        self.model = build_model(config.model_name, config.model)
        source = config[self.warm_start_section].init_from if self.warm_start_section else ""
        if source and not is_public_checkpoint(source):
            source = check_run_path(source, f"{self.warm_start_section}.init_from")
        self.init_from = source

    def warm_start(self, params: Any, task_state: Any) -> tuple[Any, Any]:
        if not self.init_from:
            return params, task_state
        cfg = self.config[self.warm_start_section]
        if is_public_checkpoint(self.init_from):  # e.g. a CLIP image tower: init_subtree "img"
            names = tuple(k for k in params if k not in set(cfg.init_skip))
            return load_pretrained(self.init_from, params, cfg.init_subtree, names), task_state
        return restore_warm_start(cfg, self.init_from, params, task_state)

    def init(self, rng: jax.Array, batch: Batch) -> tuple[Any, Any]:
        return split_variables(self.model.init(rng, batch["image"], train=False))

    def _apply(self, params: Any, model_state: Variables, images: jax.Array, train: bool) -> tuple[jax.Array, Any]:
        """(logits [B, K], new model_state)."""
        (logits, _), model_state = apply_with_state(self.model, params, model_state, images, train=train)
        return logits, model_state

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        del frozen, rng, step
        logits, task_state = self._apply(params, task_state, batch["image"], train=True)
        per_example = classification_metrics(logits, batch["label"])
        return per_example["loss"].mean(), ({"accuracy": per_example["correct"].mean()}, task_state)

    def predict(self, params, task_state, frozen, batch):
        del frozen
        logits, _ = self._apply(params, task_state, batch["image"], train=False)
        return {"logits": logits}
