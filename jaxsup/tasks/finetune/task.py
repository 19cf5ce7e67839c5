"""Supervised fine-tuning from another run's weights (SimCLRv2 step 2), task "finetune".

Same model, loss and outputs as task "supervised"; `init` starts from a
sub-tree of another run's checkpoint instead of random weights, and the batch
can be augmented on the device. config.finetune (defaults in
`jaxsup.config`):

  init_from           the other run's workdir or checkpoints dir ("" -> random init),
                      or a public checkpoint "open_clip:PATH" / "big_vision:PATH"
                      (jaxsup.interop; image position embeddings resampled to the
                      model's patch grid)
  init_subtree        where the weights live there ("params/encoder" for a
                      simclr run, "params" for a supervised one; "img" for a
                      CLIP image tower, into a ViT with the same options)
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

The weights are restored in `warm_start` (`ImageClassifier` with
warm_start_section "finetune"), which train.py calls once after a fresh init
(never on resume), straight onto the state's shardings: no host
copy, no constants in the init program.
"""
from __future__ import annotations

from typing import Any

import jax

from jaxsup.tasks.base import DataInfo, register_task
from jaxsup.tasks.common import ImageClassifier, augment_images, check_augment


@register_task("finetune", section="finetune")
class Finetune(ImageClassifier):
    """Task "supervised" started from a checkpoint sub-tree, with optional augmentation."""

    warm_start_section = "finetune"

    def __init__(self, config: Any, mesh, data: DataInfo):
        super().__init__(config, mesh, data)
        check_augment(self.cfg.augment, "finetune.augment")

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        images = augment_images(jax.random.fold_in(rng, 0), batch["image"], self.cfg.augment, self.cfg.crop_scale)
        return super().loss_fn(params, task_state, frozen, {**batch, "image": images}, rng, step)

