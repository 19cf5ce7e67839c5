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

- fused_head=True (kinds kl/rkl/jsd): the student's final Dense ("head") is
  not applied as a layer; KD and the label CE come from the student's
  `pre_logits` and the head's kernel/bias through
  `jaxsup.losses.fused_linear_kd.fused_linear_kd_ce` (row chunks, no [B, K]
  logits; for many classes / vocabulary-sized heads). The teacher comes as
  logits (fused_teacher="logits") or as its own `pre_logits` and head
  ("features": no teacher logits either). fused_impl: "chunked" or
  "reference" (builds the logits; for tests). Same loss and gradients as
  the unfused path; on a mesh that splits the batch it runs per batch shard
  (shard_map). `predict` (evaluation) still builds logits. With
  config.reinforced (below) kind may also be "soft_ce" and fused_teacher must be
  "logits" (there is no teacher model): KD is the sparse top-k loss through the
  head's column tiles (jaxsup.losses.topk_kd_fused, tasks/distill/reinforced.py;
  fused_impl is not read), the label CE its `label_ce_rows`.
- config.reinforced=DIR (a `python -m jaxsup.data.reinforce` output, replayed
  by the preprocess op "reinforce:DIR"): no teacher forward; KD is the sparse
  top-k KL (jaxsup.losses.topk_kd; kind "soft_ce": its sparse soft CE)
  against the targets stored with the batch, equal to the online teacher's
  loss when k = V. Needs kind "kl" or "soft_ce", augment "none" (the host
  replays the stored crop), no ND; fused_head=True works (above; docs/reinforced.md).

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
from jax.sharding import PartitionSpec as P

from jaxsup import sharding
from jaxsup.errors import ConfigError
from jaxsup.losses import distill as distill_losses
from jaxsup.losses.topk_kd import topk_kd_kl, topk_soft_ce
from jaxsup.losses.fused_linear_kd import fused_linear_kd_ce, linear_head_operands
from jaxsup.tasks.base import DataInfo, Task, register_task
from jaxsup.tasks.distill import reinforced as reinforced_lib
from jaxsup.tasks.common import (
    FrozenModel, abstract_init, apply_with_state, augment_images, build_model, check_augment, labelled_mask,
    leading_slice_count, masked_mean, split_variables,
)

KD_KINDS = ("kl", "rkl", "jsd", "soft_ce")
FUSED_TEACHERS = ("logits", "features")
FUSED_IMPLS = ("chunked", "reference")


def kd_term(student_logits: jax.Array, teacher_logits: jax.Array, kind: str, temperature: float, beta: float) -> jax.Array:
    """Mean KD loss over the batch; logits [B, K]."""
    if kind == "soft_ce":
        targets = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature)
        return distill_losses.soft_ce(student_logits.astype(jnp.float32) / temperature, targets)
    return distill_losses.kd_loss(student_logits, teacher_logits, temperature, kind, beta)


def validate_kd_fields(cfg: Any) -> None:
    """Raises ConfigError naming a bad distill field (T <= 0, alpha outside [0, 1], ...)."""
    if cfg.kind not in KD_KINDS:
        raise ConfigError(f"distill.kind={cfg.kind!r} is not one of {KD_KINDS}.")
    check_augment(cfg.augment, "distill.augment")
    if cfg.fused_head:
        if cfg.fused_teacher not in FUSED_TEACHERS:
            raise ConfigError(f"distill.fused_teacher={cfg.fused_teacher!r} is not one of {FUSED_TEACHERS}.")
        if cfg.fused_impl not in FUSED_IMPLS:
            raise ConfigError(f"distill.fused_impl={cfg.fused_impl!r} is not one of {FUSED_IMPLS}.")


def check_linear_head(params: Any, out: dict, who: str) -> None:
    """ConfigError unless an image model has out["pre_logits"] and a Dense `head` {kernel[, bias]}."""
    head = params.get("head") if hasattr(params, "get") else None
    if "pre_logits" not in out or not head or getattr(head.get("kernel"), "ndim", 0) != 2:
        raise ConfigError(f"distill.fused_head=True needs the {who} to end in a Dense 'head' on "
                          "out['pre_logits'] (the registered image models do).")


@register_task("distill", section="distill", check=validate_kd_fields)
class Distill(Task):
    """Student `config.model_name` learns from a frozen teacher restored from a checkpoint."""

    def __init__(self, config: Any, mesh, data: DataInfo):
        super().__init__(config, mesh, data)
        self.student = build_model(config.model_name, config.model)
        images = data.example["image"]
        (s_logits, s_out), s_params, _ = abstract_init(self.student, images)
        num_classes = int(s_logits.shape[-1])
        self.reinforced = config.get("reinforced", "")
        if self.reinforced:
            self.stored = reinforced_lib.check_reinforced(config, data.example, num_classes)
        else:
            if self.cfg.fused_head and self.cfg.kind == "soft_ce":
                raise ConfigError("distill.fused_head=True supports kind kl/rkl/jsd, not 'soft_ce' "
                                  "(soft_ce only with config.reinforced).")
            self.teacher = FrozenModel(self.cfg.teacher, images, config.partition_rules)
            self.teacher.check_classes(num_classes, config.model_name)
        self.num_classes = num_classes
        self.fused = bool(self.cfg.fused_head)
        if self.fused:
            check_linear_head(s_params, s_out, f"student {config.model_name!r}")
            self.student_features = self.student.clone(num_classes=None)
            if self.cfg.fused_teacher == "features":
                t_out = {} if self.teacher.feature_dim is None else {"pre_logits": None}
                check_linear_head(self.teacher.abstract_params, t_out,
                                  f"teacher {self.teacher.model_name!r}")
                self.teacher_features = self.teacher.model.clone(num_classes=None)
        self.uses_labels = float(self.cfg.alpha) < 1.0
        self.num_labelled = None
        if self.uses_labels and self.cfg.labelled_split:
            self.num_labelled = leading_slice_count(config, self.cfg.labelled_split, "distill.labelled_split",
                                                    data.num_examples)
        self.use_nd = float(self.cfg.nd_lambda) > 0
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
        if self.reinforced:
            return {}
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

    def _labels(self, batch) -> tuple[jax.Array, jax.Array] | tuple[None, None]:
        """(labels [B] int, 0 where unlabelled; mask [B]) or (None, None) when labels are unused."""
        if not self.uses_labels:
            return None, None
        mask = self.labelled_mask(batch)
        return jnp.where(mask > 0, batch["label"], 0), mask  # unlabelled rows never see their label

    def _logit_terms(self, params, task_state, frozen, images, labels, mask, batch=None):
        """(KD + CE loss, per-row ce or None, student top-1 [B], teacher top-1 [B], s_out, t_out, state)."""
        cfg = self.cfg
        s_logits, s_out, student_state = self._student_forward(params, task_state["student"], images, train=True)
        if self.reinforced:  # stored top-k targets replace the teacher forward
            sparse = topk_kd_kl if cfg.kind == "kl" else topk_soft_ce
            kd = sparse(s_logits, batch["reinforced_logits"], batch["reinforced_indices"],
                        batch["reinforced_lse_rest"], float(cfg.temperature))
            t_top1, t_out = reinforced_lib.stored_teacher_top1(batch), {}
        else:
            t_logits, t_out = self.teacher.apply(frozen["teacher"], images)
            kd = kd_term(s_logits, t_logits, cfg.kind, float(cfg.temperature), float(cfg.beta))
            t_top1 = jnp.argmax(t_logits, -1)
        loss, ce_rows = float(cfg.alpha) * kd, None
        if labels is not None:
            ce_rows = optax.softmax_cross_entropy_with_integer_labels(s_logits.astype(jnp.float32), labels)
            loss = loss + (1.0 - float(cfg.alpha)) * masked_mean(ce_rows, mask)
        tops = (jnp.argmax(s_logits, -1), t_top1)
        return loss, {"kd": kd}, ce_rows, tops, s_out, t_out, student_state

    def _fused_terms(self, params, task_state, frozen, images, labels, mask, batch=None):
        """As `_logit_terms`, from features and head weights (no [B, K] logits)."""
        cfg, alpha = self.cfg, float(self.cfg.alpha)
        (_, s_out), student_state = apply_with_state(self.student_features, params["student"],
                                                     task_state["student"], images, train=True)
        h_s, w_s = linear_head_operands(s_out["pre_logits"], params["student"]["head"])
        if self.reinforced:  # stored top-k targets: the sparse loss through the head's tiles
            rows = reinforced_lib.fused_rows_per_shard(self.mesh, self.config.batch_axes, h_s, w_s, batch, labels,
                                                       kind=cfg.kind, temperature=float(cfg.temperature))
            tops = (rows.student_top1, reinforced_lib.stored_teacher_top1(batch))
            loss = reinforced_lib.weighted_loss(rows, mask, alpha)
            return loss, {"kd": rows.kd.mean()}, rows.ce, tops, s_out, {}, student_state
        if cfg.fused_teacher == "features":
            teacher_vars = frozen["teacher"]
            (_, t_out), _ = apply_with_state(self.teacher_features, teacher_vars["params"],
                                             teacher_vars["model_state"], images, train=False)
            t_out = jax.lax.stop_gradient(t_out)
            teacher = linear_head_operands(t_out["pre_logits"], jax.lax.stop_gradient(teacher_vars["params"]["head"]))
        else:
            teacher, t_out = self.teacher.apply(frozen["teacher"], images)
        n = h_s.shape[0]
        kd_weights = jnp.full((n,), alpha / n, jnp.float32)
        ce_weights = None if labels is None else (1.0 - alpha) * mask / jnp.maximum(mask.sum(), 1.0)
        labels_or_zeros = jnp.zeros((n,), jnp.int32) if labels is None else labels
        loss, rows = self._fused_head_loss(h_s, w_s, teacher, labels_or_zeros, kd_weights, ce_weights)
        ce_rows = None if labels is None else rows.ce
        return (loss, {"kd": rows.kd.mean()}, ce_rows, (rows.student_top1, rows.teacher_top1), s_out, t_out,
                student_state)

    def _fused_head_loss(self, h_s, w_s, teacher, labels, kd_weights, ce_weights):
        """`fused_linear_kd_ce` (total, RowAux [B]); on a mesh that splits the batch, per batch shard
        (shard_map over the data axes, totals psum'd, W's gradient summed by the transpose), so each
        device computes only its own rows' [chunk, K] logits instead of GSPMD gathering the batch."""
        cfg = self.cfg

        def loss(h, w, t, lab, kd_w, *ce_w):
            return fused_linear_kd_ce(h, w, t, float(cfg.temperature), labels=lab, kd_weights=kd_w,
                                      ce_weights=ce_w[0] if ce_w else None, kind=cfg.kind, beta=float(cfg.beta),
                                      impl=cfg.fused_impl)

        args = (h_s, w_s, teacher, labels, kd_weights) + (() if ce_weights is None else (ce_weights,))
        axes = sharding.data_axes(self.mesh, self.config.batch_axes)
        if sharding.num_batch_shards(self.mesh, self.config.batch_axes) == 1:
            return loss(*args)

        def per_shard(*shard_args):
            total, rows = loss(*shard_args)
            return jax.lax.psum(total, axes), rows

        rows_spec = P(axes)
        teacher_spec = (rows_spec, P()) if isinstance(teacher, tuple) else rows_spec
        in_specs = (rows_spec, P(), teacher_spec) + (rows_spec,) * (len(args) - 3)
        return jax.shard_map(per_shard, mesh=self.mesh, in_specs=in_specs, out_specs=(P(), rows_spec),
                             check_vma=False)(*args)

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        del step
        cfg = self.cfg
        images = augment_images(jax.random.fold_in(rng, 0), batch["image"], cfg.augment, cfg.crop_scale)
        labels, mask = self._labels(batch)
        terms = self._fused_terms if self.fused else self._logit_terms
        loss, metrics, ce_rows, (student_top1, teacher_top1), s_out, t_out, student_state = terms(
            params, task_state, frozen, images, labels, mask, batch=batch)
        metrics["agreement"] = jnp.mean(student_top1 == teacher_top1)
        classes = teacher_top1
        if labels is not None:
            metrics.update(ce=masked_mean(ce_rows, mask), accuracy=masked_mean(student_top1 == labels, mask),
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
        if self.reinforced:
            return {"logits": logits}
        t_logits, _ = self.teacher.apply(frozen["teacher"], batch["image"])
        return {"logits": logits, "teacher_logits": t_logits}
