"""Weak-to-strong student (Burns et al. 2023), task "weak_to_strong", and its weak labels.

A strong model is trained on split B with the soft labels a weak supervisor
(trained on a disjoint split A) gave to B; the true labels of B are never
read by the loss (the student configs drop them from the train batches).
The whole pipeline (weak -> labels -> ceiling -> students -> PGR report) is
`python -m jaxsup.w2s` (jaxsup/w2s.py).

Weak labels file (`save_weak_labels` / `load_weak_labels`), an .npz:
  probs [N, K] f32   the supervisor's softmax on each example of the split
  index [N] int      the example's position in the split (the batch "index")
  split, dataset     the TFDS split string and dataset name they belong to
The task reorders them by index into a table [N, K] that is placed,
replicated, in `frozen["weak_probs"]` (N*K*4 bytes per device: fine for
digits/CIFAR, a data-pipeline join would be the way for ImageNet-size N*K),
and each step reads the rows of the batch's "index".

config.w2s (defaults in `default_config()`):
  weak_labels  path of the .npz (required)
  weak_split   the supervisor's train split; if set, checked disjoint from
               data.train_split (ValueError naming the overlap)
  loss         "aux" (auxiliary confidence loss) | "soft_ce" (naive baseline)
  aux_coef     final mixing weight alpha in [0, 1]
  warmup_frac  fraction of total_steps over which alpha ramps up linearly
  augment, crop_scale  device augmentation, as in task "distill"
config.finetune: the strong model's warm start (task "finetune" fields, e.g.
init_from a SimCLR run's "params/encoder"; "" -> random init).
Params / task_state layout as task "supervised" ("params", BatchNorm stats at
the top of task_state), so a student can be a teacher with the defaults.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from jaxsup import registry, sharding
from jaxsup.data import sources
from jaxsup.losses import weak as weak_losses
from jaxsup.tasks.distill import augment_images, check_augment
from jaxsup.tasks.finetune import Finetune
from jaxsup.tasks.teacher import abstract_init, example_batch, split_size

LOSSES = ("aux", "soft_ce")
WEAK_PROBS = "weak_probs"


def default_config(weak_labels: str = "") -> ml_collections.ConfigDict:
    """`config.w2s`: weak-label source and loss of the student (module docstring)."""
    return ml_collections.ConfigDict(
        dict(
            weak_labels=weak_labels,
            weak_split="",
            loss="aux",
            aux_coef=0.5,
            warmup_frac=0.2,
            augment="none",
            crop_scale=(0.5, 1.0),
        )
    )


def validate_w2s_fields(cfg: Any) -> None:
    """Raises ValueError naming a bad config.w2s field."""
    if cfg.loss not in LOSSES:
        raise ValueError(f"w2s.loss={cfg.loss!r} is not one of {LOSSES}.")
    for name in ("aux_coef", "warmup_frac"):
        value = float(cfg[name])
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"w2s.{name} must lie in [0, 1], got {cfg[name]!r}.")
    check_augment(cfg.augment, "w2s.augment")


# ------------------------------------------------------------------ splits
def split_ranges(data_cfg: Any, split: str) -> list[tuple[str, int, int]]:
    """[(base split, start, stop)] absolute example ranges of a TFDS split string."""
    builder = sources.get_builder(data_cfg.name, data_cfg.data_dir or None)
    try:
        instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(builder.info.splits)
    except (ValueError, KeyError, AssertionError) as err:
        raise ValueError(f"Split {split!r} of {data_cfg.name!r} cannot be resolved: {err}") from err
    ranges = []
    for ins in instructions:
        total = builder.info.splits[ins.splitname].num_examples
        start = 0 if ins.from_ is None else ins.from_
        stop = total if ins.to is None else ins.to
        ranges.append((ins.splitname, start, stop))
    return ranges


def check_disjoint_splits(data_cfg: Any, splits: dict[str, str]) -> None:
    """Raises ValueError if any two of the named splits share an example.

    splits: {role: TFDS split string}, e.g. {"weak": "train[:50%]", "strong": "train[50%:]"}.
    """
    resolved = {role: split_ranges(data_cfg, split) for role, split in splits.items()}
    roles = list(resolved)
    for i, a in enumerate(roles):
        for b in roles[i + 1:]:
            shared = sum(
                max(0, min(stop_a, stop_b) - max(start_a, start_b))
                for base_a, start_a, stop_a in resolved[a]
                for base_b, start_b, stop_b in resolved[b]
                if base_a == base_b
            )
            if shared:
                raise ValueError(
                    f"Splits overlap: {a}={splits[a]!r} and {b}={splits[b]!r} share {shared} examples of "
                    f"{data_cfg.name!r}; the weak supervisor, the strong models and the test set must use "
                    "disjoint examples (e.g. train[:50%] / train[50%:] / test)."
                )


# ------------------------------------------------------------ weak labels
def save_weak_labels(path: str, probs: np.ndarray, index: np.ndarray, split: str, dataset: str) -> None:
    """Writes the weak labels .npz atomically (probs [N, K], index [N])."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, probs=np.asarray(probs, np.float32), index=np.asarray(index, np.int64),
             split=np.str_(split), dataset=np.str_(dataset))
    os.replace(tmp, path)


def load_weak_labels(path: str, split: str, dataset: str, num_examples: int, num_classes: int) -> np.ndarray:
    """Weak labels of `split` as a table [num_examples, num_classes] f32, row i = example index i.

    Raises ValueError if the file is missing, belongs to another split or
    dataset, has another number of examples or classes, or rows that are not
    probability distributions.
    """
    if not path:
        raise ValueError("w2s.weak_labels is empty: give the .npz the weak supervisor wrote (see jaxsup.w2s).")
    if not os.path.isfile(path):
        raise ValueError(
            f"Weak labels file {path!r} does not exist: run the weak supervisor and its labelling "
            "stage first (python -m jaxsup.w2s), or fix w2s.weak_labels."
        )
    with np.load(path) as f:
        missing = [k for k in ("probs", "index", "split", "dataset") if k not in f.files]
        if missing:
            raise ValueError(f"Weak labels file {path!r} lacks {missing}; it has {sorted(f.files)}.")
        probs, index = np.asarray(f["probs"], np.float32), np.asarray(f["index"])
        saved_split, saved_dataset = str(f["split"]), str(f["dataset"])
    if (saved_split, saved_dataset) != (split, dataset):
        raise ValueError(
            f"Weak labels {path!r} are for {saved_dataset!r} split {saved_split!r}, but the student trains "
            f"on {dataset!r} split {split!r}."
        )
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise ValueError(
            f"Weak labels {path!r} have shape {probs.shape}; the student has {num_classes} classes, so "
            f"they must be [N, {num_classes}] (wrong number of classes)."
        )
    if probs.shape[0] != num_examples or index.shape != (num_examples,):
        raise ValueError(
            f"Weak labels {path!r} cover {probs.shape[0]} examples (index {index.shape}), but split "
            f"{split!r} has {num_examples}."
        )
    if not np.array_equal(np.sort(index), np.arange(num_examples)):
        raise ValueError(f"Weak labels {path!r}: index is not a permutation of 0..{num_examples - 1}.")
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or np.abs(probs.sum(1) - 1).max() > 1e-3:
        raise ValueError(f"Weak labels {path!r}: rows must be probability distributions (>= 0, summing to 1).")
    table = np.empty_like(probs)
    table[index] = probs
    return table


@registry.register("task", "weak_to_strong")
class WeakToStrong(Finetune):
    """Strong student on a weak supervisor's soft labels (aux confidence loss or plain soft CE)."""

    def __init__(self, config: Any, mesh):
        super().__init__(config, mesh)
        self.w2s = cfg = config.w2s
        validate_w2s_fields(cfg)
        train_split = config.data.train_split
        if cfg.weak_split:
            check_disjoint_splits(config.data, {"w2s.weak_split": cfg.weak_split, "data.train_split": train_split})
        (logits, _), _, _ = abstract_init(self.model, example_batch(config)["image"])
        self.num_classes = int(logits.shape[-1])
        self.num_examples = split_size(config, train_split)
        self.weak_table = load_weak_labels(
            cfg.weak_labels, train_split, config.data.name, self.num_examples, self.num_classes
        )

    def load_frozen(self):
        return {WEAK_PROBS: jax.device_put(jnp.asarray(self.weak_table), sharding.replicated(self.mesh))}

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        cfg = self.w2s
        images = augment_images(jax.random.fold_in(rng, 0), batch["image"], cfg.augment, cfg.crop_scale)
        logits, task_state = self._apply(params, task_state, images, train=True)
        weak_probs = frozen[WEAK_PROBS][batch["index"]]
        metrics = {"weak_agreement": weak_losses.hard_label_agreement(logits, weak_probs)}
        if cfg.loss == "aux":
            alpha = weak_losses.aux_alpha(step, self.config.total_steps, float(cfg.aux_coef), float(cfg.warmup_frac))
            loss = weak_losses.aux_confidence_loss(logits, weak_probs, alpha)
            metrics["alpha"] = alpha
        else:
            loss = weak_losses.soft_label_ce(logits, weak_probs)
        if "label" in batch:  # monitoring only, when the train preprocess keeps labels
            metrics["accuracy"] = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, (metrics, task_state)
