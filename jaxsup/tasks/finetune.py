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

The weights are restored in `warm_start`, which train.py calls once after a
fresh init (never on resume), straight onto the state's shardings: no host
copy, no constants in the init program.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections

from jaxsup import checkpoint, registry
from jaxsup.tasks.distill import augment_images, check_augment
from jaxsup.tasks.supervised import Supervised
from jaxsup.tasks.teacher import check_run_path


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


@registry.register("task", "finetune")
class Finetune(Supervised):
    """Task "supervised" started from a checkpoint sub-tree, with optional augmentation."""

    def __init__(self, config: Any, mesh):
        super().__init__(config, mesh)
        self.cfg = config.finetune
        check_augment(self.cfg.augment, "finetune.augment")
        if self.cfg.init_from:
            check_run_path(self.cfg.init_from, "finetune.init_from")

    def warm_start(self, params, task_state):
        """Every top-level entry not in init_skip read from the other run, onto its sharding."""
        cfg = self.cfg
        if not cfg.init_from:
            return params, task_state
        step = None if cfg.init_step < 0 else int(cfg.init_step)
        skip = set(cfg.init_skip)

        def read(subtree: str, tree: dict[str, Any]) -> dict[str, Any]:
            return {
                k: v if k in skip else checkpoint.restore_subtree(cfg.init_from, f"{subtree}/{k}", target=v, step=step)
                for k, v in tree.items()
            }

        if cfg.init_state_subtree:
            task_state = {name: read(f"{cfg.init_state_subtree}/{name}", coll) for name, coll in task_state.items()}
        return read(cfg.init_subtree, params), task_state

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        images = augment_images(jax.random.fold_in(rng, 0), batch["image"], self.cfg.augment, self.cfg.crop_scale)
        return super().loss_fn(params, task_state, frozen, {**batch, "image": images}, rng, step)

