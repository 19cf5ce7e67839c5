"""Supervised fine-tuning from another run's weights (SimCLRv2 step 2), task "finetune".

Same model, loss and outputs as task "supervised"; `init` starts from a
sub-tree of another run's checkpoint instead of random weights, and the batch
can be augmented on the device. config.finetune (defaults in
`default_config()`):

  init_from           the other run's workdir or checkpoints dir ("" -> random init)
  init_subtree        where the weights live there ("params/encoder" for a
                      simclr run, "params" for a supervised one)
  init_state_subtree  where its BatchNorm stats etc. live ("task_state/encoder";
                      "" -> keep the fresh ones); each collection c of the
                      model is read from f"{init_state_subtree}/{c}"
  init_step           -1: latest
  init_skip           top-level param names left at their random init (the new
                      classifier "head"); every other top-level entry k is read
                      from f"{init_subtree}/{k}" (so an old head in the source
                      run is ignored, a missing or mis-shaped layer is an error)
  augment, crop_scale as in task "distill" ("none" | "crop" | "simclr")

The SimCLR encoder's output (its "pre_logits") feeds the new linear head,
i.e. fine-tuning from head layer 0; restoring a model that includes the
first projection-head layer needs a registered encoder+head model.

The weights are read once, to the host, when the task is built (Orbax cannot
restore inside the jit/eval_shape trace that runs `init`); `init` returns them
as constants of the init program, which is fine for models of a few MB. A
generic warm-start hook in train.py (restore onto the state's shardings after
init, before step 0) would avoid the host copy for big ones.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxsup import checkpoint, registry
from jaxsup.tasks.distill import augment_images, check_augment
from jaxsup.tasks.supervised import Supervised
from jaxsup.tasks.teacher import abstract_init, check_run_path, example_batch


def default_config(init_from: str = "") -> ml_collections.ConfigDict:
    """`config.finetune`: warm-start source and augmentation (module docstring)."""
    return ml_collections.ConfigDict(
        dict(
            init_from=init_from,
            init_subtree="params/encoder",
            init_state_subtree="task_state/encoder",
            init_step=-1,
            init_skip=("head",),
            augment="none",
            crop_scale=(0.5, 1.0),
        )
    )


def _host_target(tree: Any) -> Any:
    """ShapeDtypeStructs on the first device for the arrays / ShapeDtypeStructs of `tree`."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)


@registry.register("task", "finetune")
class Finetune(Supervised):
    """Task "supervised" started from a checkpoint sub-tree, with optional augmentation."""

    def __init__(self, config: Any, mesh):
        super().__init__(config, mesh)
        self.cfg = config.finetune
        check_augment(self.cfg.augment, "finetune.augment")
        self.initial: dict[str, Any] | None = None
        if self.cfg.init_from:
            check_run_path(self.cfg.init_from, "finetune.init_from")
            _, params, model_state = abstract_init(self.model, example_batch(config)["image"])
            self.initial = self._read_initial(params, model_state)

    def _read_initial(self, params: Any, model_state: Any) -> dict[str, Any]:
        """Host copies of the restored entries: {"params": {k: ...}, "state": {coll: {k: ...}}}."""
        cfg = self.cfg
        step = None if cfg.init_step < 0 else int(cfg.init_step)
        skip = set(cfg.init_skip)

        def read(subtree: str, tree: dict[str, Any]) -> dict[str, Any]:
            return {
                k: checkpoint.to_numpy_tree(
                    checkpoint.restore_subtree(cfg.init_from, f"{subtree}/{k}", target=_host_target(v), step=step)
                )
                for k, v in tree.items() if k not in skip
            }

        state = {}
        if cfg.init_state_subtree:
            state = {name: read(f"{cfg.init_state_subtree}/{name}", coll) for name, coll in model_state.items()}
        return {"params": read(cfg.init_subtree, params), "state": state}

    def init(self, rng, batch):
        params, model_state = super().init(rng, batch)
        if self.initial is None:
            return params, model_state
        as_arrays = lambda tree: jax.tree.map(jnp.asarray, tree)  # noqa: E731
        params = {**params, **as_arrays(self.initial["params"])}
        model_state = {name: {**coll, **as_arrays(self.initial["state"].get(name, {}))} for name, coll in model_state.items()}
        return params, model_state

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        images = augment_images(jax.random.fold_in(rng, 0), batch["image"], self.cfg.augment, self.cfg.crop_scale)
        return super().loss_fn(params, task_state, frozen, {**batch, "image": images}, rng, step)

