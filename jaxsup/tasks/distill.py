"""Teacher -> student distillation: KD with or without labels, feature (ND) KD.

The teacher is a `jaxsup.tasks.common.FrozenModel` restored from another run
(config.distill.teacher, fields in `jaxsup.config.teacher_spec`); the student is `config.model_name` +
`config.model` (any architecture with the same number of classes). Each
step augments the batch once with the step's RNG and feeds the same images
to both (consistent teaching).

Loss (fields of `config.distill`, defaults in `jaxsup.config`):

  alpha * KD + (1 - alpha) * CE_labelled [+ ND]

- KD, `kind`: "kl" / "rkl" / "jsd" = `T^2 D(teacher, student)` at
  temperature T (jaxsup.losses.distill.kd_loss); "soft_ce" = SimCLRv2's
  `-sum_y p_T(y|x; T) log p_S(y|x; T)` (no T^2 factor).
- alpha = 1: label-free KD (SSLD / SimCLRv2 distillation): labels are never
  read, so the train preprocess may drop them.
- labelled_split, e.g. "train[:10%]" with data.train_split "train": CE only
  on the examples of that slice (batch "index" < its length; other labels
  are masked out before use), KD on every example. Protocol for "10 % labels
  + KD on the unlabelled 90 %": the teacher is trained on train[:10%] only
  (or pretrained without labels and fine-tuned on it), then the student
  gets CE on train[:10%] and KD on all of train.
- nd_lambda > 0 adds the norm-and-direction feature term
  (jaxsup.losses.distill.nd_loss) on `pre_logits`, with teacher class means
  computed once at start-up over the labelled examples (true labels), or,
  for alpha = 1, over the train split with the teacher's own top-1 classes;
  the class of a training example is its label where labels are allowed,
  else the teacher's top-1. If the feature widths differ the student gets a
  linear projector (params["projector"]).

Layout: params = {"student": ..., ["projector": ...]}, task_state =
{"student": BatchNorm stats or {}}; a distilled student can itself be a
teacher with params_subtree "params/student", state_subtree
"task_state/student". frozen = {"teacher": {"params", "model_state"},
["class_means": [K, D]]}.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsup import registry, sharding
from jaxsup.errors import ConfigError
from jaxsup.losses import distill as distill_losses
from jaxsup.tasks.base import DataInfo, Task
from jaxsup.tasks.common import (
    FrozenModel, abstract_init, apply_with_state, augment_images, build_model, check_augment, labelled_mask,
    leading_slice_count, masked_mean, split_variables,
)

KD_KINDS = ("kl", "rkl", "jsd", "soft_ce")


def kd_term(student_logits: jax.Array, teacher_logits: jax.Array, kind: str, temperature: float, beta: float) -> jax.Array:
    """Mean KD loss over the batch; logits [B, K]."""
    if kind == "soft_ce":
        targets = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature)
        return distill_losses.soft_ce(student_logits.astype(jnp.float32) / temperature, targets)
    return distill_losses.kd_loss(student_logits, teacher_logits, temperature, kind, beta)


def validate_kd_fields(cfg: Any) -> None:
    """Raises ConfigError naming a bad distill field (T <= 0, alpha outside [0, 1], ...)."""
    if not float(cfg.temperature) > 0:
        raise ConfigError(f"distill.temperature must be > 0, got {cfg.temperature!r}.")
    if not 0.0 <= float(cfg.alpha) <= 1.0:
        raise ConfigError(f"distill.alpha must lie in [0, 1], got {cfg.alpha!r}.")
    if cfg.kind not in KD_KINDS:
        raise ConfigError(f"distill.kind={cfg.kind!r} is not one of {KD_KINDS}.")
    if float(cfg.nd_lambda) < 0:
        raise ConfigError(f"distill.nd_lambda must be >= 0, got {cfg.nd_lambda!r}.")
    check_augment(cfg.augment, "distill.augment")


@registry.register("task", "distill")
class Distill(Task):
    """Student `config.model_name` learns from a frozen teacher restored from a checkpoint."""

    def __init__(self, config: Any, mesh, data: DataInfo):
        super().__init__(config, mesh, data)
        self.cfg = cfg = config.distill
        validate_kd_fields(cfg)
        self.student = build_model(config.model_name, config.model)
        images = data.example["image"]
        self.teacher = FrozenModel(cfg.teacher, images, config.partition_rules)
        (s_logits, s_out), _, _ = abstract_init(self.student, images)
        num_classes = int(s_logits.shape[-1])
        if num_classes != self.teacher.num_outputs:
            raise ConfigError(
                f"Teacher {self.teacher.model_name!r} outputs {self.teacher.num_outputs} classes but the "
                f"student {config.model_name!r} outputs {num_classes}: teacher and student class counts "
                "must agree (distill.teacher.model vs config.model num_classes)."
            )
        self.num_classes = num_classes
        self.uses_labels = float(cfg.alpha) < 1.0
        self.num_labelled = None
        if self.uses_labels and cfg.labelled_split:
            self.num_labelled = leading_slice_count(config, cfg.labelled_split, "distill.labelled_split",
                                                    data.num_examples)
        self.use_nd = float(cfg.nd_lambda) > 0
        self.projector = None
        if self.use_nd:
            student_dim = int(s_out["pre_logits"].shape[-1])
            if self.teacher.feature_dim is None:
                raise ConfigError(f"Feature KD needs the teacher's out['pre_logits']; {self.teacher.model_name!r} has none.")
            if student_dim != self.teacher.feature_dim:
                self.projector = nn.Dense(self.teacher.feature_dim, use_bias=False, name="projector")

    # ------------------------------------------------------------------ state
    def init(self, rng, batch):
        k_student, k_proj = jax.random.split(rng)
        variables = self.student.init(k_student, batch["image"], train=False)
        student_params, student_state = split_variables(variables)
        params = {"student": student_params}
        if self.projector is not None:
            _, out = self.student.apply(variables, batch["image"], train=False)
            params["projector"] = self.projector.init(k_proj, out["pre_logits"])["params"]
        return params, {"student": student_state}

    def load_frozen(self):
        frozen = {"teacher": self.teacher.load(self.mesh)}
        if self.use_nd:
            frozen["class_means"] = jax.device_put(self._teacher_class_means(frozen["teacher"]), sharding.replicated(self.mesh))
        return frozen

    def _teacher_class_means(self, teacher_vars) -> jax.Array:
        """Unit teacher class-mean features [K, D] over the labelled split (or pseudo-labels)."""
        config = self.config
        split = config.distill.labelled_split or config.data.train_split
        uses_labels = self.uses_labels

        def features_of(variables, batch):
            logits, out = self.teacher.apply(variables, batch["image"])
            classes = batch["label"] if uses_labels else jnp.argmax(logits, axis=-1)
            return out["pre_logits"], classes, batch["mask"]

        features_of = jax.jit(features_of, out_shardings=sharding.replicated(self.mesh))
        feats, labels = [], []
        for batch in self.data.eval_batches(split):
            features, classes, mask = jax.device_get(features_of(teacher_vars, batch))
            feats.append(features[mask > 0])
            labels.append(classes[mask > 0])
        return distill_losses.teacher_class_means(np.concatenate(feats), np.concatenate(labels), self.num_classes)

    # ------------------------------------------------------------------- loss
    def _student_forward(self, params, model_state, images, train: bool):
        """(logits [B, K], out, new student model_state)."""
        (logits, out), model_state = apply_with_state(self.student, params["student"], model_state, images, train=train)
        return logits, out, model_state

    def labelled_mask(self, batch) -> jax.Array:
        """[B] float: 1 where the example's label may be used."""
        if self.num_labelled is None:
            return jnp.ones(batch["image"].shape[0], jnp.float32)
        return labelled_mask(batch["index"], self.num_labelled)

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        del step
        cfg = self.cfg
        images = augment_images(jax.random.fold_in(rng, 0), batch["image"], cfg.augment, cfg.crop_scale)
        t_logits, t_out = self.teacher.apply(frozen["teacher"], images)
        s_logits, s_out, student_state = self._student_forward(params, task_state["student"], images, train=True)
        kd = kd_term(s_logits, t_logits, cfg.kind, float(cfg.temperature), float(cfg.beta))
        teacher_top1 = jnp.argmax(t_logits, axis=-1)
        metrics = {"kd": kd, "agreement": jnp.mean(jnp.argmax(s_logits, -1) == teacher_top1)}
        loss = float(cfg.alpha) * kd
        classes = teacher_top1
        if self.uses_labels:
            mask = self.labelled_mask(batch)
            labels = jnp.where(mask > 0, batch["label"], 0)  # unlabelled rows never see their label
            ce_rows = optax.softmax_cross_entropy_with_integer_labels(s_logits.astype(jnp.float32), labels)
            ce = masked_mean(ce_rows, mask)
            loss = loss + (1.0 - float(cfg.alpha)) * ce
            metrics.update(ce=ce, accuracy=masked_mean(jnp.argmax(s_logits, -1) == labels, mask),
                           labelled_fraction=mask.mean())
            classes = jnp.where(mask > 0, labels, teacher_top1)
        if self.use_nd:
            f_s = s_out["pre_logits"]
            if self.projector is not None:
                f_s = self.projector.apply({"params": params["projector"]}, f_s)
            nd = distill_losses.nd_loss(f_s, t_out["pre_logits"], frozen["class_means"], classes, float(cfg.nd_lambda))
            loss = loss + nd
            metrics["nd"] = nd
        return loss, (metrics, {"student": student_state})

    def predict(self, params, task_state, frozen, batch):
        logits, _, _ = self._student_forward(params, task_state["student"], batch["image"], train=False)
        t_logits, _ = self.teacher.apply(frozen["teacher"], batch["image"])
        return {"logits": logits, "teacher_logits": t_logits}
