"""PromptKD: context vectors in the text tower (exactly the token embeddings they replace), the
class-logit KD loss against NumPy (value, and gradient by float64 finite differences, in and out
of jit), and the chain CLIP run -> CoOp prompt stage -> label-free student distillation: each
stage learns, and the student is scored with the prompt run's own class features."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT, apply_overrides, train_losses
from jaxsup.config import load_config
from jaxsup.errors import ConfigError
from jaxsup.losses import prompt_kd
from jaxsup.models.text import TextTransformer
from jaxsup.train import train_and_evaluate

JIT = [lambda f: f, jax.jit]


def test_context_vectors_replace_token_embeddings():
    model = TextTransformer(vocab_size=20, max_len=8, width=16, depth=1, num_heads=2)
    tokens = jnp.array([[1, 5, 6, 7, 9, 2, 0, 0], [1, 4, 4, 8, 2, 0, 0, 0]], jnp.int32)
    params = model.init(jax.random.key(0), tokens)["params"]
    plain, _ = model.apply({"params": params}, tokens)
    same = params["token_embedding"]["embedding"][tokens[0, 1:4]]  # [3, D]: row 0's own embeddings
    prompted, _ = model.apply({"params": params}, tokens[:1], prompt=same)
    np.testing.assert_allclose(prompted, plain[:1], atol=1e-6)
    other, _ = model.apply({"params": params}, tokens, prompt=same + 1.0)
    assert np.abs(np.asarray(other - plain)).max() > 1e-3
    grad = jax.grad(lambda ctx: model.apply({"params": params}, tokens, prompt=ctx)[0].sum())(same)
    assert grad.shape == same.shape and np.abs(np.asarray(grad)).min() > 0


def np_loss(zs, zt, text, scale, temp):
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    ls, lt = scale * unit(zs) @ unit(text).T, scale * unit(zt) @ unit(text).T
    p = np.exp(log_softmax(lt / temp))
    return temp**2 * np.mean(np.sum(p * (log_softmax(lt / temp) - log_softmax(ls / temp)), axis=1))


@pytest.mark.parametrize("wrap", JIT)
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_prompt_kd_loss_matches_numpy(wrap, temp):
    rng = np.random.default_rng(0)
    zs, zt, text = rng.normal(size=(6, 5)), rng.normal(size=(6, 5)), rng.normal(size=(4, 5))
    scale = 7.0
    fn = wrap(jax.value_and_grad(lambda a, b, c: prompt_kd.prompt_kd_loss(a, b, c, jnp.float32(scale), temp)))
    loss, grad = fn(*(jnp.asarray(a, jnp.float32) for a in (zs, zt, text)))
    np.testing.assert_allclose(loss, np_loss(zs, zt, text, scale, temp), rtol=1e-5)
    eps, numeric = 1e-6, np.zeros_like(zs)
    for idx in np.ndindex(zs.shape):
        up, down = zs.copy(), zs.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (np_loss(up, zt, text, scale, temp) - np_loss(down, zt, text, scale, temp)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-5)


def test_prompt_kd_loss_bf16_embeddings():
    rng = np.random.default_rng(1)
    zs, zt, text = rng.normal(size=(6, 5)), rng.normal(size=(6, 5)), rng.normal(size=(4, 5))
    got = prompt_kd.prompt_kd_loss(*(jnp.asarray(a, jnp.bfloat16) for a in (zs, zt, text)), jnp.float32(7.0), 1.0)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_loss(zs, zt, text, 7.0, 1.0), rtol=5e-2, atol=1e-2)


# ------------------------------------------------------------------ the chain
def short(spec, steps, batch, **overrides):
    c = load_config(os.path.join(ROOT, "configs", spec))
    c.total_steps, c.batch_size, c.log_every = steps, batch, 2
    c.optim.warmup_steps = 2
    c.checkpoint.every, c.checkpoint.async_save = steps, False
    c.mesh = (("data", 1),)
    for ev in c.evals.values():
        ev.every = 0
    return apply_overrides(c, overrides)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("promptkd")
    clip, coop, student = (str(root / n) for n in ("clip", "coop", "student"))
    train_and_evaluate(short("clip_digits.py", 40, 64, **{"evals": {}}), clip)
    coop_metrics = train_and_evaluate(short("promptkd_digits.py:prompt", 30, 64,
                                            **{"promptkd.clip.path": clip, "optim.lr": 1e-2}), coop)
    kd_metrics = train_and_evaluate(short("promptkd_digits.py", 60, 64, **{"promptkd.clip.path": clip,
                                                                          "promptkd.prompt_run": coop}), student)
    return dict(clip=clip, coop=coop, student=student, coop_metrics=coop_metrics, kd_metrics=kd_metrics)


def loss_drop(workdir):
    losses = train_losses(workdir)
    steps = sorted(losses)
    return np.mean([losses[s] for s in steps[-3:]]) / np.mean([losses[s] for s in steps[:3]])


def test_prompt_stage_learns(chain):
    assert loss_drop(chain["coop"]) < 0.9
    assert chain["coop_metrics"]["test/top1"] > 0.2, chain["coop_metrics"]  # chance 0.1; measured 0.27


def test_student_distills_with_the_teachers_class_features(chain):
    kd = chain["kd_metrics"]
    assert loss_drop(chain["student"]) < 0.7
    # The distill run's teacher is the prompt run's classifier: same test accuracy.
    assert kd["test/teacher_top1"] == pytest.approx(chain["coop_metrics"]["test/top1"], abs=1e-6)
    assert kd["test/agreement"] > 0.5 and kd["test/top1"] > 0.6 * kd["test/teacher_top1"], kd


def test_errors_name_the_field(chain, tmp_path):
    with pytest.raises(ConfigError, match="promptkd.stage"):
        train_and_evaluate(short("promptkd_digits.py", 2, 64, **{"promptkd.clip.path": chain["clip"],
                                                                  "promptkd.stage": "both"}), str(tmp_path))
    with pytest.raises(ConfigError, match="must be a two_tower run"):
        train_and_evaluate(short("promptkd_digits.py", 2, 64, **{"promptkd.clip.path": chain["coop"]}),
                           str(tmp_path / "b"))
