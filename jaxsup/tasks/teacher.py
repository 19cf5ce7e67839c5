"""Frozen models restored from another run's checkpoint (distillation teachers).

A teacher is described by a config sub-dict (`teacher_spec()`), e.g.
`config.distill.teacher`:

  path            another run's workdir, or its `checkpoints` dir (required)
  params_subtree  where its params live in that checkpoint: "params" for
                  supervised / finetune / pskd runs, "params/student" for a
                  distill run, "params/encoder" or the like for other tasks
  state_subtree   where its other flax collections live (BatchNorm
                  "batch_stats"): each collection `c` the model has is
                  restored from f"{state_subtree}/{c}" ("task_state" for
                  supervised runs, "task_state/student" for distill runs)
  step            -1: the latest step
  model_name, model   registry name + kwargs; model_name "" reads both from
                  the run's config.json
  partition_rules ((regex, tactic), ...) for the teacher's own sharding over
                  the task's mesh, matched against "params/..." and
                  "model_state/<collection>/..."; () uses config.partition_rules

The teacher is loaded in `Task.load_frozen()`: restored with
`checkpoint.restore_subtree` straight onto its shardings, never given to the
optimizer, never saved with the student, and applied in inference mode
(`train=False`, running BatchNorm statistics) under `stop_gradient`.
"""
from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxsup import checkpoint, sharding
from jaxsup.data import preprocess, sources
from jaxsup.tasks.base import build_model, split_variables

Variables = dict[str, Any]


def teacher_spec(path: str = "", **fields: Any) -> ml_collections.ConfigDict:
    """The config sub-dict describing a teacher (fields documented in the module docstring)."""
    spec = ml_collections.ConfigDict(
        dict(
            path=path,
            params_subtree="params",
            state_subtree="task_state",
            step=-1,
            model_name="",
            model=ml_collections.ConfigDict(),
            partition_rules=(),
        )
    )
    spec.update(fields)
    return spec


def example_batch(config: Any) -> dict[str, np.ndarray]:
    """The first training example, preprocessed, as a batch of size 1 (for shapes)."""
    source = sources.open_source(config.data.name, config.data.train_split, config.data.data_dir or None)
    example = preprocess.build(config.data.preprocess)(source[0])
    return {k: np.asarray(v)[None] for k, v in example.items()}


def split_size(config: Any, split: str) -> int:
    """Number of examples in `split` of config.data."""
    return len(sources.open_source(config.data.name, split, config.data.data_dir or None))


def leading_slice_count(config: Any, split: str, field: str) -> int:
    """Length of `split`, which must be a leading slice "base[:n]" of the unsliced data.train_split."""
    base = config.data.train_split
    if "[" in base or not split.startswith(base + "[:"):
        raise ValueError(
            f"{field}={split!r} must be a leading slice of data.train_split={base!r} (e.g. "
            f"'{base.split('[')[0]}[:10%]' with an unsliced train split): the labelled examples are the "
            "first ones of the split."
        )
    return split_size(config, split)


def apply_image_model(
    model: nn.Module, params: Any, model_state: Variables, images: jax.Array, *, train: bool
) -> tuple[jax.Array, dict[str, jax.Array], Variables]:
    """(logits [B, K], out (e.g. out["pre_logits"] [B, D]), new model_state).

    With train=True the model's non-param collections (BatchNorm stats) are
    updated and returned; otherwise model_state comes back unchanged.
    """
    variables = {"params": params, **model_state}
    if train and model_state:
        (logits, out), new_state = model.apply(variables, images, train=True, mutable=list(model_state))
        return logits, out, dict(new_state)
    logits, out = model.apply(variables, images, train=train)
    return logits, out, model_state


def abstract_init(model: nn.Module, example_images: Any) -> tuple[Any, Any, Variables]:
    """ShapeDtypeStructs of (outputs (logits, out), params, other collections) of `model`."""
    outputs, variables = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x, train=False), example_images
    )
    return (outputs, *split_variables(variables))


def run_config_path(path: str) -> str:
    """config.json of the run at `path` (a workdir or its checkpoints dir)."""
    here = os.path.join(path, "config.json")
    if os.path.isfile(here):
        return here
    return os.path.join(os.path.dirname(os.path.normpath(path)), "config.json")


def resolve_model(spec: Any, what: str = "distill.teacher") -> tuple[str, dict[str, Any]]:
    """(model_name, kwargs) from the spec, or from the run's config.json if model_name is ""."""
    if spec.model_name:
        model = spec.model
        return spec.model_name, model.to_dict() if hasattr(model, "to_dict") else dict(model)
    config_path = run_config_path(spec.path)
    if not os.path.isfile(config_path):
        raise ValueError(
            f"{what}.model_name is empty and the run at {spec.path!r} has no config.json to read "
            f"the teacher model from: set {what}.model_name and {what}.model."
        )
    with open(config_path) as f:
        saved = json.load(f)
    return saved["model_name"], dict(saved.get("model") or {})


def check_run_path(path: str, what: str = "distill.teacher.path") -> str:
    """Raises ValueError unless `path` names an existing directory."""
    if not path:
        raise ValueError(f"{what} is empty: give another run's workdir or checkpoint directory.")
    if not os.path.isdir(path):
        raise ValueError(f"{what} {path!r} does not exist (no such checkpoint directory).")
    return path


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
        self.rules = tuple(spec.partition_rules) or tuple(default_rules)
        self.num_outputs = int(logits.shape[-1])
        self.feature_dim = int(out["pre_logits"].shape[-1]) if "pre_logits" in out else None

    def shardings(self, mesh: Mesh) -> dict[str, Any]:
        tree = {"params": self.abstract_params, "model_state": self.abstract_state}
        return sharding.tree_shardings(tree, self.rules, mesh)

    def load(self, mesh: Mesh) -> dict[str, Any]:
        """Restores params and every non-param collection onto the teacher's shardings."""
        shards = self.shardings(mesh)
        step = None if self.spec.step < 0 else int(self.spec.step)
        params = checkpoint.restore_subtree(
            self.path, self.spec.params_subtree,
            target=checkpoint.abstract_tree(self.abstract_params, shards["params"]), step=step,
        )
        state = {
            name: checkpoint.restore_subtree(
                self.path, f"{self.spec.state_subtree}/{name}",
                target=checkpoint.abstract_tree(abstract, shards["model_state"][name]), step=step,
            )
            for name, abstract in self.abstract_state.items()
        }
        return {"params": params, "model_state": state}

    def apply(self, frozen: dict[str, Any], images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits, out, _ = apply_image_model(self.model, frozen["params"], frozen["model_state"], images, train=False)
        return jax.lax.stop_gradient((logits, out))
