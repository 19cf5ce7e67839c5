"""Weak-to-strong: split checks, weak-label file, the student task's loss, warm start
from a pretrained run, PGR report, and a 1-seed smoke run of the whole pipeline."""
import builtins
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from helpers import ROOT, apply_overrides, read_metrics, restored_params, tiny_supervised_config
from jaxsup import sharding
from jaxsup.config import load_config
from jaxsup.experiment import build_task
from jaxsup.w2s import pgr
from jaxsup.data.datasets import splits
from jaxsup.data.labels import weak_labels
from jaxsup.train import train_and_evaluate

CONFIG = os.path.join(ROOT, "configs/w2s_digits.py")
B_SPLIT, A_SPLIT = "train[50%:]", "train[:50%]"
DIGITS = ml_collections.ConfigDict(dict(name="digits", data_dir=""))


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def tiny_pipeline_config(**stage_overrides):
    """configs/w2s_digits.py:runlocal with tiny strong models (8 devices, default mesh)."""
    c = load_config(f"{CONFIG}:runlocal")
    for stage in ("ceiling", "student", "student_aux"):
        c.stages[stage].model.widths = (4, 8)
    return apply_overrides(c, stage_overrides)


def random_weak_labels(path, n, k=10, seed=0, split=B_SPLIT):
    rng = np.random.default_rng(seed)
    probs = np.exp(np_log_softmax(rng.standard_normal((n, k)) * 2)).astype(np.float32)
    index = rng.permutation(n)
    weak_labels.save_weak_labels(path, probs, index, split, "digits")
    table = np.empty_like(probs)
    table[index] = probs
    return table


def student_config(labels_path, stage="student_aux", **overrides):
    c = load_config(f"{CONFIG}:{stage},runlocal")
    c.w2s.weak_labels = str(labels_path)
    c.mesh = (("data", 1),)
    c.model.widths = (4, 8)
    return apply_overrides(c, overrides)


# ------------------------------------------------------------------ splits
@pytest.mark.parametrize("a,b", [("train[:60%]", "train[50%:]"), ("train", "train[90%:]"),
                                 ("train[:10]+train[20:30]", "train[25:40]")])
def test_overlapping_splits_raise(a, b):
    with pytest.raises(ValueError, match="Splits overlap"):
        splits.check_disjoint_splits(DIGITS, {"weak": a, "strong": b})


def test_disjoint_splits_pass_and_ranges_are_absolute():
    splits.check_disjoint_splits(DIGITS, {"weak": A_SPLIT, "strong": B_SPLIT, "test": "test"})
    a, b = splits.split_ranges(DIGITS, A_SPLIT), splits.split_ranges(DIGITS, B_SPLIT)
    assert a[0][0] == b[0][0] == "train" and a[0][1] == 0 and a[0][2] == b[0][1] and b[0][2] == 1437


def test_pipeline_with_overlapping_splits_raises_before_training(tmp_path):
    c = tiny_pipeline_config(**{"splits.weak": "train[:60%]"})
    from jaxsup.w2s import pipeline as w2s

    with pytest.raises(ValueError, match="Splits overlap"):
        w2s.run_pipeline(c, str(tmp_path))
    assert not os.path.exists(tmp_path / "seed_0")


def test_student_split_overlapping_weak_split_raises(tmp_path):
    random_weak_labels(tmp_path / "w.npz", 719)
    c = student_config(tmp_path / "w.npz", **{"w2s.weak_split": "train[:70%]"})
    with pytest.raises(ValueError, match="Splits overlap"):
        build_task(c, sharding.make_mesh(c.mesh))


def test_stage_configs_get_seed_splits_and_paths():
    from jaxsup.w2s import pipeline as w2s

    c = tiny_pipeline_config(**{"strong_init.path": "/runs/simclr", "splits.test": "train[90%:]"})
    for stage in ("weak", "ceiling", "student", "student_aux"):
        s = w2s.stage_config(c, stage, 7, "/runs/w2s/seed_7")
        assert s.seed == 7 and s.evals.test.split == "train[90%:]"
        assert s.data.train_split == (A_SPLIT if stage == "weak" else B_SPLIT)
        if stage != "weak":
            assert (s.finetune.init_from, s.finetune.init_subtree) == ("/runs/simclr", "params/encoder")
        if stage.startswith("student"):
            assert s.w2s.weak_labels == "/runs/w2s/seed_7/weak_labels.npz" and s.w2s.weak_split == A_SPLIT
            assert s.w2s.loss == ("aux" if stage == "student_aux" else "soft_ce")
            assert "label" not in ",".join(s.data.preprocess)  # students never get true labels
    assert c.stages.weak.seed == 0  # the pipeline config itself is untouched


# ------------------------------------------------------------ weak labels
def test_weak_label_file_roundtrip_orders_by_index(tmp_path):
    table = random_weak_labels(tmp_path / "w.npz", 719)
    loaded = weak_labels.load_weak_labels(str(tmp_path / "w.npz"), B_SPLIT, "digits", 719, 10)
    np.testing.assert_array_equal(loaded, table)


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"), ("classes", "wrong number of classes"), ("count", "cover 700 examples"),
    ("split", "are for 'digits' split"), ("not_probs", "probability distributions"), ("index", "not a permutation"),
])
def test_bad_weak_labels_raise(tmp_path, case, match):
    path = str(tmp_path / "w.npz")
    n, k, split = 719, 10, B_SPLIT
    probs, index = np.full((n, k), 1.0 / k, np.float32), np.arange(n)
    if case == "classes":
        probs = np.full((n, 3), 1 / 3, np.float32)
    elif case == "count":
        probs, index = probs[:700], index[:700]
    elif case == "split":
        split = A_SPLIT
    elif case == "not_probs":
        probs = probs * 2
    elif case == "index":
        index = np.zeros(n, np.int64)
    if case != "missing":
        weak_labels.save_weak_labels(path, probs, index, split, "digits")
    with pytest.raises(ValueError, match=match):
        weak_labels.load_weak_labels(path, B_SPLIT, "digits", n, k)


def test_student_task_without_weak_labels_raises(tmp_path):
    c = student_config(tmp_path / "nowhere.npz")
    with pytest.raises(ValueError, match="does not exist"):
        build_task(c, sharding.make_mesh(c.mesh)).load_frozen()
    c = student_config("")
    with pytest.raises(ValueError, match="w2s.weak_labels is empty"):
        build_task(c, sharding.make_mesh(c.mesh)).load_frozen()


@pytest.mark.parametrize("field,value", [("aux_coef", 1.5), ("aux_coef", -0.1), ("warmup_frac", 2.0), ("loss", "mse")])
def test_bad_w2s_fields_raise(tmp_path, field, value):
    random_weak_labels(tmp_path / "w.npz", 719)
    c = student_config(tmp_path / "w.npz", **{f"w2s.{field}": value})
    with pytest.raises(ValueError, match=f"w2s.{field}"):
        build_task(c, sharding.make_mesh(c.mesh))


# ------------------------------------------------------------ student loss
@pytest.mark.parametrize("stage", ["student", "student_aux"])
def test_student_loss_reads_weak_labels_by_index(tmp_path, stage):
    """loss_fn == NumPy soft CE (or aux loss) against table[index], on 8 devices as on 1."""
    from test_weak_losses import np_multiclass_hard, np_softmax

    table = random_weak_labels(tmp_path / "w.npz", 719, seed=3)
    c = student_config(tmp_path / "w.npz", stage, total_steps=10, **{"w2s.warmup_frac": 0.5, "w2s.aux_coef": 0.8})
    task = build_task(c, sharding.make_mesh(c.mesh))
    rng = np.random.default_rng(0)
    index = rng.permutation(719)[:16].astype(np.int32)  # positions in the split (tests/data/test_pipeline.py)
    batch = {"image": jnp.asarray(rng.uniform(0, 1, (16, 8, 8, 1)), jnp.float32), "index": jnp.asarray(index)}
    params, state = task.init(jax.random.key(0), jax.tree.map(lambda x: x[:1], batch))
    frozen = task.load_frozen()
    step = jnp.int32(3)
    loss, (metrics, _) = task.loss_fn(params, state, frozen, batch, jax.random.key(1), step)
    logits = np.asarray(task.predict(params, state, frozen, batch)["logits"], np.float64)
    weak = table[index].astype(np.float64)
    alpha = 0.8 * min(1.0, 3 / 10 / 0.5) if stage == "student_aux" else 0.0
    targets = (1 - alpha) * weak + alpha * np_multiclass_hard(np_softmax(logits), weak)
    np.testing.assert_allclose(float(loss), -(targets * np_log_softmax(logits)).sum(-1).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["weak_agreement"]), np.mean(logits.argmax(-1) == weak.argmax(-1)))
    if stage == "student":
        return
    # Same loss with the batch sharded over 8 devices (quantiles over the global batch).
    mesh8 = sharding.make_mesh((("data", 8),))
    task8 = build_task(c, mesh8)
    batch8 = jax.device_put(batch, sharding.batch_sharding(mesh8, ("data",)))
    params8, state8 = jax.device_put((params, state), sharding.replicated(mesh8))
    loss8, _ = jax.jit(task8.loss_fn)(params8, state8, task8.load_frozen(), batch8, jax.random.key(1), step)
    np.testing.assert_allclose(float(loss8), float(loss), rtol=1e-5)


def test_student_warm_start_from_pretrained_run(tmp_path):
    """finetune fields restore the strong model (minus its head) from another run via restore_subtree."""
    pre = tiny_supervised_config(model_name="cnn", model=dict(widths=(4, 8), num_classes=10), total_steps=1, evals={})
    train_and_evaluate(pre, str(tmp_path / "pretrained"))
    random_weak_labels(tmp_path / "w.npz", 719)
    c = student_config(tmp_path / "w.npz", **{
        "finetune.init_from": str(tmp_path / "pretrained"), "finetune.init_subtree": "params",
        "finetune.init_state_subtree": "",
    })
    task = build_task(c, sharding.make_mesh(c.mesh))
    params, _ = task.warm_start(*task.init(jax.random.key(5), {"image": jnp.zeros((1, 8, 8, 1))}))
    saved = restored_params(str(tmp_path / "pretrained"))
    body = lambda p: {k: v for k, v in p.items() if k != "head"}  # noqa: E731
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, body(params)), body(saved))
    assert not np.array_equal(np.asarray(params["head"]["kernel"]), saved["head"]["kernel"])


# ------------------------------------------------------------ PGR report
def test_pgr_formula_and_summary():
    assert pgr.performance_gap_recovered(0.6, 0.9, 0.75) == pytest.approx(0.5, rel=1e-12)
    assert pgr.performance_gap_recovered(0.6, 0.9, 0.5) == pytest.approx(-1 / 3, rel=1e-12)
    assert math.isnan(pgr.performance_gap_recovered(0.9, 0.9, 0.95))
    rng = np.random.default_rng(0)
    per_seed = {s: dict(weak=rng.uniform(.5, .7), ceiling=rng.uniform(.9, 1), student=rng.uniform(.6, .9),
                        student_aux=rng.uniform(.6, .9)) for s in range(3)}
    summary = pgr.summarise(per_seed)
    for k in ("student", "student_aux"):
        per = [(r[k] - r["weak"]) / (r["ceiling"] - r["weak"]) for r in per_seed.values()]
        assert summary["pgr"][k]["mean"] == pytest.approx(np.mean(per), rel=1e-12)
        assert summary["pgr"][k]["std"] == pytest.approx(np.std(per), rel=1e-12)
        means = {m: np.mean([r[m] for r in per_seed.values()]) for m in ("weak", "ceiling", k)}
        want = (means[k] - means["weak"]) / (means["ceiling"] - means["weak"])
        assert summary["pgr_of_mean_accuracies"][k] == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="lack 'ceiling'"):
        pgr.summarise({0: {"weak": 0.5, "student": 0.6}})


def test_report_without_matplotlib_still_writes_json_and_markdown(tmp_path, monkeypatch, caplog):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    summary = pgr.summarise({0: dict(weak=0.6, ceiling=0.9, student=0.7, student_aux=0.8)})
    paths = pgr.write_report(summary, str(tmp_path))
    assert paths["png"] is None and not os.path.exists(tmp_path / "report.png")
    assert json.load(open(paths["json"]))["pgr"]["student_aux"]["mean"] == pytest.approx(2 / 3)
    assert "| strong student, aux confidence loss | 80.0 ± 0.0 | 0.667 ± 0.000 |" in open(paths["md"]).read()


# ------------------------------------------------------------ smoke pipeline
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from jaxsup.w2s import pipeline as w2s

    workdir = str(tmp_path_factory.mktemp("w2s"))
    return workdir, w2s.run_pipeline(tiny_pipeline_config(), workdir, seeds=[0])


def test_smoke_pipeline_report(smoke_run):
    workdir, summary = smoke_run
    seed_dir = os.path.join(workdir, "seed_0")
    for stage in ("weak", "ceiling", "student", "student_aux"):
        last_eval = [r for r in read_metrics(os.path.join(seed_dir, stage)) if "test/top1" in r][-1]
        assert summary["per_seed"]["0"][stage] == last_eval["test/top1"]
    r = summary["per_seed"]["0"]
    for k in ("student", "student_aux"):
        want = pgr.performance_gap_recovered(r["weak"], r["ceiling"], r[k])
        got = summary["per_seed_pgr"]["0"][k]
        assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, rel=1e-12)
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report["seeds"] == [0] and report["splits"]["strong"] == B_SPLIT
    assert os.path.getsize(os.path.join(workdir, "report.png")) > 0
    assert "PGR" in open(os.path.join(workdir, "report.md")).read()


def test_smoke_pipeline_weak_labels_are_the_weak_models_softmax(smoke_run):
    workdir, summary = smoke_run
    seed_dir = os.path.join(workdir, "seed_0")
    with np.load(os.path.join(seed_dir, "weak_labels.npz")) as f:
        probs, index, split = f["probs"], f["index"], str(f["split"])
    assert split == B_SPLIT and sorted(index) == list(range(719))
    # Independent recomputation: the weak MLP's params applied with NumPy to split B.
    from jaxsup.data.host import preprocess
    from jaxsup.data.datasets import sources

    src = sources.open_source("digits", B_SPLIT)
    pre = preprocess.build(("image_to_float", "label_to_int32", "keep:image,label"))
    examples = [pre(src[int(i)]) for i in index]
    x = np.stack([e["image"] for e in examples]).reshape(len(index), -1).astype(np.float64)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), restored_params(os.path.join(seed_dir, "weak")))
    h = x @ p["dense_0"]["kernel"] + p["dense_0"]["bias"]
    h = np.asarray(jax.nn.gelu(jnp.asarray(h, jnp.float32)), np.float64)
    logits = h @ p["head"]["kernel"] + p["head"]["bias"]
    np.testing.assert_allclose(probs, np.exp(np_log_softmax(logits)), rtol=1e-5, atol=1e-7)
    labels = np.array([e["label"] for e in examples])
    assert summary["per_seed"]["0"]["weak_labels_on_strong_split"] == pytest.approx(np.mean(probs.argmax(-1) == labels))
