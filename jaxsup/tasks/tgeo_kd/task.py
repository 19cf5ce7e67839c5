"""Trilateral-geometry KD (TGeo-KD, Hu et al. 2024), task "tgeo_kd": a learned per-sample KD/CE ratio.

The student (`config.model_name` + `config.model`, a model without BatchNorm
state) learns from a frozen teacher (`config.tgeo.teacher`, a
`jaxsup.config.teacher_spec`) with, per example,

    alpha_i * T^2 KL(teacher^T || student^T) + (1 - alpha_i) * CE(student, y_i)

(jaxsup.losses.trilateral). The last `tgeo.val_examples` examples of
data.train_split are a held-out validation set: the student never trains on
them.

mode "learned": alpha_i = sigmoid(MLP(Delta_i)), Delta_i the trilateral
    geometry of student, teacher, ground truth and the teacher's class-mean
    prediction (computed once at start-up over data.train_split with the true
    labels). The ratio network is trained on the validation rows through one
    virtual SGD step of the student (lr `tgeo.inner_lr`): the one-step
    unrolled approximation of the paper's bilevel problem
    (`jaxsup.losses.trilateral.bilevel_losses`). It starts at alpha_i = `tgeo.alpha`.
mode "fixed":   the baseline, alpha_i = `tgeo.alpha` for every example (plain KD
    with a constant ratio), same train rows, validation rows unused.

config.tgeo: teacher, mode, alpha, temperature, val_examples, hidden (ratio
network width), inner_lr, teacher_swap (pairs of classes whose teacher logits are
swapped: a teacher confidently wrong on every example of those classes, the
setting where a per-sample ratio has something to find; () = the teacher as is). Metrics: alpha (mean), alpha_teacher_right /
alpha_teacher_wrong (mean alpha over train rows where the teacher's top-1 is /
is not the label: the mechanism), val_ce (one-step validation CE).

Layout: params = {"student", ["ratio"]}, task_state = {}, frozen = {"teacher",
"class_means" [K, K]}. predict -> "logits" (student), "teacher_logits".
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsup import sharding
from jaxsup.errors import ConfigError
from jaxsup.losses import trilateral
from jaxsup.tasks.base import DataInfo, Task, register_task
from jaxsup.tasks.common import FrozenModel, abstract_init, build_model, masked_mean

MODES = ("learned", "fixed")


def swap_classes(logits: jax.Array, pairs: Any) -> jax.Array:
    """logits [B, K] with the columns of each (a, b) in pairs exchanged."""
    order = np.arange(logits.shape[-1])
    for a, b in pairs:
        order[[a, b]] = order[[b, a]]
    return logits[:, order]


class RatioNet(nn.Module):
    """features [B, F] -> alpha [B] in (0, 1); starts at alpha0 for every input (zero last kernel)."""

    hidden: int
    alpha0: float

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        h = nn.relu(nn.Dense(self.hidden, name="hidden")(features))
        logit = nn.Dense(1, kernel_init=nn.initializers.zeros,
                         bias_init=nn.initializers.constant(math.log(self.alpha0 / (1.0 - self.alpha0))), name="out")(h)
        return jax.nn.sigmoid(logit[:, 0])


def validate_fields(cfg: Any) -> None:
    """Raises ConfigError naming a bad config.tgeo field."""
    if cfg.mode not in MODES:
        raise ConfigError(f"tgeo.mode={cfg.mode!r} is not one of {MODES}.")


@register_task("tgeo_kd", section="tgeo", check=validate_fields)
class TGeoKD(Task):
    """Student + ratio network (mode "learned") or constant ratio (mode "fixed"); see the module doc."""

    def __init__(self, config: Any, mesh, data: DataInfo):
        super().__init__(config, mesh, data)
        self.student = build_model(config.model_name, config.model)
        images = data.example["image"]
        self.teacher = FrozenModel(self.cfg.teacher, images, config.partition_rules, what="tgeo.teacher")
        (logits, _), _, student_state = abstract_init(self.student, images)
        self.num_classes = int(logits.shape[-1])
        self.teacher.check_classes(self.num_classes, config.model_name)
        if student_state:
            raise ConfigError(f"tgeo_kd needs a student without mutable state; {config.model_name!r} has "
                              f"{sorted(student_state)} (the virtual step of the bilevel update cannot carry it).")
        self.num_train = data.num_examples(config.data.train_split) - int(self.cfg.val_examples)
        if self.num_train < 1:
            raise ConfigError(f"tgeo.val_examples={self.cfg.val_examples} leaves no training examples in "
                              f"data.train_split={config.data.train_split!r}.")
        self.ratio = RatioNet(int(self.cfg.hidden), float(self.cfg.alpha)) if self.cfg.mode == "learned" else None
        self.swap = tuple(tuple(int(c) for c in pair) for pair in self.cfg.teacher_swap)
        if any(len(p) != 2 or not all(0 <= c < self.num_classes for c in p) for p in self.swap):
            raise ConfigError(f"tgeo.teacher_swap={self.cfg.teacher_swap!r} must be pairs of class ids in [0, "
                              f"{self.num_classes}).")

    def init(self, rng, batch):
        k_s, k_r = jax.random.split(rng)
        params = {"student": self.student.init(k_s, batch["image"], train=False)["params"]}
        if self.ratio is not None:
            width = trilateral.NUM_EDGES * (self.num_classes + 1)
            params["ratio"] = self.ratio.init(k_r, jnp.zeros((1, width), jnp.float32))["params"]
        return params, {}

    def load_frozen(self):
        teacher = self.teacher.load(self.mesh)
        means = jax.device_put(self._teacher_class_means(teacher), sharding.replicated(self.mesh))
        return {"teacher": teacher, "class_means": means}

    def _teacher_class_means(self, teacher_vars) -> np.ndarray:
        """[K, K]: mean teacher probabilities over the examples of each true class of data.train_split."""
        probs_of = jax.jit(lambda v, b: (jax.nn.softmax(self._teacher_logits(v, b["image"]).astype(jnp.float32)),
                                         b["label"], b["mask"]), out_shardings=sharding.replicated(self.mesh))
        sums = np.zeros((self.num_classes, self.num_classes))
        counts = np.zeros(self.num_classes)
        for batch in self.data.eval_batches(self.config.data.train_split):
            probs, labels, mask = jax.device_get(probs_of(teacher_vars, batch))
            keep = mask > 0
            np.add.at(sums, labels[keep], probs[keep])
            np.add.at(counts, labels[keep], 1.0)
        return (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)

    def _teacher_logits(self, teacher_vars, images) -> jax.Array:
        """[B, K]: the frozen teacher's logits, with the tgeo.teacher_swap columns exchanged."""
        return swap_classes(self.teacher.apply(teacher_vars, images)[0], self.swap)

    def _student_logits(self, student_params, images):
        return self.student.apply({"params": student_params}, images, train=False)[0]

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        del rng, step
        cfg = self.cfg
        images, labels = batch["image"], batch["label"]
        val_mask = (batch["index"] >= self.num_train).astype(jnp.float32)
        train_mask = 1.0 - val_mask
        t_logits = self._teacher_logits(frozen["teacher"], images)
        temperature = float(cfg.temperature)
        if self.ratio is None:
            logits = self._student_logits(params["student"], images)
            alpha = jnp.full(labels.shape, float(cfg.alpha), jnp.float32)
            loss = masked_mean(trilateral.fused_kd_rows(logits, t_logits, labels, alpha, temperature), train_mask)
            metrics = {}
        else:
            ratio_fn = lambda phi, feats: self.ratio.apply({"params": phi}, feats)  # noqa: E731
            loss, out = trilateral.bilevel_losses(
                self._student_logits, ratio_fn, params["student"], params["ratio"], images, labels, t_logits,
                frozen["class_means"], train_mask, val_mask, temperature, float(cfg.inner_lr))
            alpha = out["alpha"]
            logits = jax.lax.stop_gradient(self._student_logits(params["student"], images))
            metrics = {"student_loss": out["train_loss"], "val_ce": out["val_loss"]}
        teacher_right = (jnp.argmax(t_logits, -1) == labels).astype(jnp.float32)
        metrics.update(
            alpha=masked_mean(alpha, train_mask),
            alpha_teacher_right=masked_mean(alpha, train_mask * teacher_right),
            alpha_teacher_wrong=masked_mean(alpha, train_mask * (1.0 - teacher_right)),
            accuracy=masked_mean(jnp.argmax(logits, -1) == labels, train_mask),
        )
        return loss, (metrics, task_state)

    def predict(self, params, task_state, frozen, batch):
        t_logits = self._teacher_logits(frozen["teacher"], batch["image"])
        return {"logits": self._student_logits(params["student"], batch["image"]), "teacher_logits": t_logits}
