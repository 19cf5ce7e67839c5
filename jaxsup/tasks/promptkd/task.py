"""PromptKD (Li et al., CVPR 2024), task "promptkd": prompt-tune a CLIP teacher, distill it into a small student.

The teacher is a jaxsup two-tower CLIP run restored from its workdir
(`config.promptkd.clip`, a `jaxsup.config.teacher_spec`; its model is read from
the run's config.json), always frozen. Two stages, `config.promptkd.stage`:

"prompt"  (CoOp): learn `n_ctx` context vectors [n_ctx, D] that replace the
    text tower's input embeddings of the first n_ctx positions of each class
    prompt "<ctx> <class name>" (initialised from the embeddings of the bytes
    of `ctx_init` when given, else random), with CE of
    `t * cos(image embedding, class text embedding)` on the labelled images of
    data.train_split (e.g. "train[:5%]"). params = {"ctx"}.
"distill" (PromptKD): the teacher's K class text features are computed once at
    start-up (load_frozen) from the prompt run `prompt_run` (its params/ctx), or
    from the hand-written `templates` when prompt_run is "" (the zero-shot
    teacher, an ablation). The student (`config.model_name` + `config.model`
    as a backbone) with a linear projector to the CLIP embedding width learns
    on the images of data.train_split without their labels:
    T^2 KL(teacher logits || student logits), both the CLIP scale t times the
    cosine to the same class text features (jaxsup.losses.prompt_kd). At test
    time the student classifies with those text features.
    params = {"student", "projector"}.

config.promptkd: stage, clip, prompt_run, n_ctx, ctx_init, class_names, templates,
temperature. predict -> "logits" (the trained model: prompted teacher, or
student), "teacher_logits" (distill stage).
frozen = {"clip": CLIP params, ["text": [K, E], "scale": ()] (distill)}.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsup import checkpoint, sharding
from jaxsup.data.host import image_text
from jaxsup.errors import ConfigError, DataError
from jaxsup.losses import prompt_kd
from jaxsup.tasks.base import DataInfo, Task, register_task
from jaxsup.tasks.common import apply_with_state, build_backbone, build_model, check_run_path, resolve_model, split_variables

STAGES = ("prompt", "distill")
PLACEHOLDER = "X"  # byte standing in for a learned context vector (any non-pad id works)


def validate_fields(cfg: Any) -> None:
    """Raises ConfigError naming a bad config.promptkd field."""
    if cfg.stage not in STAGES:
        raise ConfigError(f"promptkd.stage={cfg.stage!r} is not one of {STAGES}.")
    if cfg.stage == "prompt" and not (cfg.ctx_init or int(cfg.n_ctx) > 0):
        raise ConfigError("promptkd.n_ctx must be > 0 (or give promptkd.ctx_init).")
    if not float(cfg.temperature) > 0:
        raise ConfigError(f"promptkd.temperature must be > 0, got {cfg.temperature!r}.")
    if cfg.class_names not in image_text.CLASS_NAME_SETS:
        raise ConfigError(f"promptkd.class_names={cfg.class_names!r} is not one of "
                          f"{sorted(image_text.CLASS_NAME_SETS)}.")


class FrozenClip:
    """A two-tower run's params, model and byte-tokenized class prompts."""

    def __init__(self, spec: Any, example_images: Any):
        self.spec = spec
        self.path = check_run_path(spec.path, "promptkd.clip.path")
        name, kwargs = resolve_model(spec, "promptkd.clip")
        if name != "two_tower":
            raise ConfigError(f"promptkd.clip must be a two_tower run; {self.path!r} trained {name!r}.")
        self.model = build_model(name, kwargs)
        text = dict(kwargs.get("text_kwargs") or {})
        self.max_len, self.width = int(text.get("max_len", 64)), int(text.get("width", 512))
        tokens = np.zeros((1, self.max_len), np.int32)
        variables = jax.eval_shape(lambda x, t: self.model.init(jax.random.key(0), x, t), example_images, tokens)
        self.abstract_params, others = split_variables(variables)
        if others:
            raise ConfigError(f"promptkd.clip: models with state {sorted(others)} are not supported.")

    def load(self, mesh) -> Any:
        step = None if self.spec.step < 0 else int(self.spec.step)
        target = checkpoint.abstract_tree(self.abstract_params, jax.tree.map(lambda _: sharding.replicated(mesh),
                                                                             self.abstract_params))
        return checkpoint.restore_subtree(self.path, self.spec.params_subtree, target=target, step=step)

    def tokens(self, texts: list[str]) -> np.ndarray:
        return image_text.cached_tokenizer("bytes").encode(texts, self.max_len)

    def image_embeddings(self, params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(unit image embeddings [B, E], scale t ()) gradient-stopped."""
        zimg, _, out = self.model.apply({"params": params}, images, None)
        return jax.lax.stop_gradient((zimg, out["t"]))

    def text_embeddings(self, params: Any, tokens: jax.Array, ctx: jax.Array | None = None) -> jax.Array:
        """[N, L] tokens (+ context vectors [M, D] at positions 1..M) -> unit text embeddings [N, E]."""
        _, ztxt, _ = self.model.apply({"params": params}, None, tokens, prompt=ctx)
        return ztxt


@register_task("promptkd", section="promptkd", check=validate_fields)
class PromptKD(Task):
    """Stage "prompt": CoOp context vectors on a frozen CLIP; stage "distill": student + projector."""

    def __init__(self, config: Any, mesh, data: DataInfo):
        super().__init__(config, mesh, data)
        images = data.example["image"]
        self.clip = FrozenClip(self.cfg.clip, images)
        self.names = list(image_text.CLASS_NAME_SETS[self.cfg.class_names])
        self.n_ctx = len(self.cfg.ctx_init.encode()) if self.cfg.ctx_init else int(self.cfg.n_ctx)
        self.prompt_run = check_run_path(self.cfg.prompt_run, "promptkd.prompt_run") if self.cfg.prompt_run else ""
        if self.cfg.stage == "distill":
            self.student = build_backbone(config.model_name, config.model)
            embed_dim = int(self.clip.model.embed_dim)
            self.projector = nn.Dense(embed_dim, use_bias=False, name="projector")

    # ------------------------------------------------------------------ prompts
    def _prompt_tokens(self, n_ctx: int) -> np.ndarray:
        """[K, L]: BOS, n_ctx context positions (ctx_init bytes or placeholders), the class name, EOS."""
        prefix = self.cfg.ctx_init if self.cfg.ctx_init else PLACEHOLDER * n_ctx
        return self.clip.tokens([prefix + name for name in self.names])

    def _ctx_init(self, rng: jax.Array) -> jax.Array:
        return 0.02 * jax.random.normal(rng, (self.n_ctx, self.clip.width), jnp.float32)

    def _teacher_text(self, clip_params: Any) -> jax.Array:
        """[K, E]: the prompt run's class features, or the unit mean over the hand-written templates."""
        if self.prompt_run:
            ctx = checkpoint.restore_subtree(self.prompt_run, "params/ctx")
            n_ctx = int(ctx.shape[0])
            return self.clip.text_embeddings(clip_params, jnp.asarray(self._prompt_tokens(n_ctx)), jnp.asarray(ctx))
        templates = image_text.resolve_templates(self.cfg.templates)
        tokens = self.clip.tokens(image_text.class_prompts(self.names, templates))
        ztxt = self.clip.text_embeddings(clip_params, jnp.asarray(tokens)).reshape(len(self.names), len(templates), -1)
        return prompt_kd.unit_rows(ztxt.mean(axis=1))

    # -------------------------------------------------------------------- state
    def init(self, rng, batch):
        if self.cfg.stage == "prompt":
            return {"ctx": self._ctx_init(rng)}, {}
        k_s, k_p = jax.random.split(rng)
        student, state = split_variables(self.student.init(k_s, batch["image"], train=False))
        feats, _ = self.student.apply({"params": student, **state}, batch["image"], train=False)
        return {"student": student, "projector": self.projector.init(k_p, feats)["params"]}, state

    def warm_start(self, params, task_state):
        """Stage "prompt" with ctx_init: the context starts as the CLIP token embeddings of its bytes."""
        if self.cfg.stage != "prompt" or not self.cfg.ctx_init:
            return params, task_state
        table = checkpoint.restore_subtree(self.clip.path, f"{self.cfg.clip.params_subtree}/txt/token_embedding/embedding")
        ids = self._prompt_tokens(self.n_ctx)[0, 1:1 + self.n_ctx]
        ctx = jax.device_put(jnp.asarray(table)[ids].astype(jnp.float32), params["ctx"].sharding)
        return {"ctx": ctx}, task_state

    def load_frozen(self):
        clip_params = self.clip.load(self.mesh)
        frozen = {"clip": clip_params}
        if self.cfg.stage == "distill":
            replicated = sharding.replicated(self.mesh)
            _, _, out = self.clip.model.apply({"params": clip_params}, None, None)
            frozen["text"] = jax.device_put(self._teacher_text(clip_params), replicated)
            frozen["scale"] = jax.device_put(out["t"], replicated)
        return frozen

    # --------------------------------------------------------------------- loss
    def _prompted_logits(self, params, frozen, images):
        zimg, scale = self.clip.image_embeddings(frozen["clip"], images)
        tokens = jnp.asarray(self._prompt_tokens(self.n_ctx))
        text = self.clip.text_embeddings(frozen["clip"], tokens, params["ctx"])
        return prompt_kd.class_logits(zimg, text, scale)

    def _student_embeddings(self, params, model_state, images, train: bool):
        (feats, _), model_state = apply_with_state(self.student, params["student"], model_state, images, train=train)
        return self.projector.apply({"params": params["projector"]}, feats), model_state

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        del rng, step
        if self.cfg.stage == "prompt":
            if "label" not in batch:
                raise DataError(f"promptkd stage 'prompt' needs 'label' in the batch; it has {sorted(batch)}.")
            logits = self._prompted_logits(params, frozen, batch["image"])
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
            return ce, ({"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}, task_state)
        z_s, task_state = self._student_embeddings(params, task_state, batch["image"], train=True)
        z_t, _ = self.clip.image_embeddings(frozen["clip"], batch["image"])
        loss = prompt_kd.prompt_kd_loss(z_s, z_t, frozen["text"], frozen["scale"], float(self.cfg.temperature))
        agree = jnp.argmax(z_s @ frozen["text"].T, -1) == jnp.argmax(z_t @ frozen["text"].T, -1)
        return loss, ({"kd": loss, "agreement": agree.mean()}, task_state)

    def predict(self, params, task_state, frozen, batch):
        if self.cfg.stage == "prompt":
            return {"logits": self._prompted_logits(params, frozen, batch["image"])}
        z_s, _ = self._student_embeddings(params, task_state, batch["image"], train=False)
        z_t, _ = self.clip.image_embeddings(frozen["clip"], batch["image"])
        return {"logits": prompt_kd.class_logits(z_s, frozen["text"], frozen["scale"]),
                "teacher_logits": prompt_kd.class_logits(z_t, frozen["text"], frozen["scale"])}
