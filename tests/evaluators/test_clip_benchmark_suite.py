"""The CLIP_benchmark suite (jaxsup/evaluators/clip_benchmark.py) on eval sets generated in its `wds_*` layout.

Metrics are checked against NumPy definitions here, and against clip_benchmark 1.6.2's own run
(its webdataset reader, its zero-shot / retrieval metric code) of the same random-init open_clip
model that jaxsup imports (peer test, skipped when clip_benchmark is not installed).
"""
from __future__ import annotations

import io
import json
import math
import os
import tarfile

import jax
import numpy as np
import pytest

from interop_helpers import build_open_clip, jaxsup_kwargs, shrink
from jaxsup import sharding
from jaxsup.errors import DataError
from jaxsup.evaluators import clip_benchmark as cb
from jaxsup.interop import convert, files, presets
from jaxsup.models.two_tower import TwoTower

BATCH_SHARDING = sharding.batch_sharding(sharding.make_mesh((("data", 1),)))
CLASSES = ["cat", "dog", "red car", "tree", "boat", "apple", "house"]
TEMPLATES = ["a photo of a {c}.", "a drawing of the {c}", "{c}"]
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SIZE = 64  # the shrunk ViT-B-32: patch 32, a 2x2 grid


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(split_dir, samples: list[dict[str, bytes]], per_shard: int) -> None:
    """CLIP_benchmark's layout: <split>/nshards.txt and <split>/{i}.tar of `<key>.<ext>` files."""
    os.makedirs(split_dir)
    shards = [samples[i:i + per_shard] for i in range(0, len(samples), per_shard)]
    for s, shard in enumerate(shards):
        with tarfile.open(os.path.join(split_dir, f"{s}.tar"), "w") as tar:
            for i, parts in enumerate(shard):
                for ext, data in parts.items():
                    info = tarfile.TarInfo(f"s{s:03d}{i:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    with open(os.path.join(split_dir, "nshards.txt"), "w") as f:
        f.write(f"{len(shards)}\n")


def make_classification(root, name: str = "wds_toy", n: int = 120, seed: int = 0) -> str:
    """Random images whose class is visible (a class-coloured square), labels 0..K-1."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, name)
    samples = []
    for i in range(n):
        label = int(rng.integers(len(CLASSES)))
        image = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
        image[: 8 + 6 * label, : 8 + 6 * label] = 255 - 30 * label
        samples.append({"png": png(image), "cls": f"{label}".encode()})
    write_shards(os.path.join(folder, "test"), samples, per_shard=50)
    with open(os.path.join(folder, "classnames.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    with open(os.path.join(folder, "zeroshot_classification_templates.txt"), "w") as f:
        f.write("\n".join(TEMPLATES) + "\n")
    return folder


def make_retrieval(root, name: str = "wds_toy_captions", n: int = 40, seed: int = 1) -> str:
    """Images with 1-3 captions each (image i's captions name its colour words)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, name)
    words = ["red", "green", "blue", "dark", "bright", "striped", "round", "small"]
    samples = []
    for i in range(n):
        image = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
        caps = [" ".join(rng.choice(words, size=3)) + f" {i}" for _ in range(int(rng.integers(1, 4)))]
        samples.append({"jpg" if i % 2 else "png": png(image), "txt": "\n".join(caps).encode()})
    write_shards(os.path.join(folder, "test"), samples, per_shard=16)
    with open(os.path.join(folder, "dataset_type.txt"), "w") as f:
        f.write("retrieval\n")
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(open_clip model, jaxsup TwoTower, its params): a random shrunk ViT-B-32 saved and imported."""
    cfg = shrink(presets.open_clip_config("ViT-B-32"))
    oc = build_open_clip(cfg, seed=3)
    path = str(tmp_path_factory.mktemp("oc") / "model.safetensors")
    files.write_safetensors({k: v.numpy() for k, v in oc.state_dict().items()}, path)
    kwargs = jaxsup_kwargs(cfg)
    tower = TwoTower(**kwargs)
    shapes = jax.eval_shape(tower.init, jax.random.key(0), np.zeros((1, SIZE, SIZE, 3), np.float32),
                            np.zeros((1, 77), np.int32))["params"]
    flat = convert.load_for_model(f"open_clip:{path}", {k: v.shape for k, v in convert.flatten(shapes).items()})
    return oc, tower, convert.nest(flat)


def predict_fn(tower, params):
    @jax.jit
    def run(batch):
        zimg, ztxt, _ = tower.apply({"params": params}, batch.get("image"), batch.get("tokens"))
        return {k: v for k, v in (("zimg", zimg), ("ztxt", ztxt)) if v is not None}

    return run


def suite(root, out, datasets, **extra):
    norm = f"normalize:mean={'/'.join(map(str, MEAN))},std={'/'.join(map(str, STD))}"
    cfg = dict(type="clip_benchmark", root=str(root), datasets=tuple(datasets), output_dir=str(out), batch_size=32,
               tokenizer="clip", max_len=77, preprocess=("decode", norm), model="ViT-B-32-tiny", pretrained="random",
               **extra)
    import ml_collections

    return cb.ClipBenchmarkEvaluator(ml_collections.ConfigDict(cfg), None, BATCH_SHARDING)


# ------------------------------------------------------------------ metric definitions (NumPy)
def test_classification_metrics_follow_the_definitions():
    rng = np.random.default_rng(0)
    z, classifier = rng.normal(size=(50, 8)), cb.normalize_rows(rng.normal(size=(6, 8)))
    labels = rng.integers(0, 6, size=50)
    got = cb.classification_metrics(z, labels, classifier)
    scores = cb.normalize_rows(z) @ classifier.T
    order = np.argsort(-scores, axis=1)
    assert got["acc1"] == pytest.approx(np.mean(order[:, 0] == labels))
    assert got["acc5"] == pytest.approx(np.mean([labels[i] in order[i, :5] for i in range(50)]))
    per_class = [np.mean(order[labels == k, 0] == k) for k in np.unique(labels)]
    assert got["mean_per_class_recall"] == pytest.approx(np.mean(per_class))
    assert math.isnan(cb.classification_metrics(z, labels % 3, classifier[:3])["acc5"])


def test_retrieval_metrics_follow_the_definitions_whatever_the_chunk():
    rng = np.random.default_rng(1)
    zimg, ztxt = rng.normal(size=(30, 8)), rng.normal(size=(70, 8))
    text_image = np.sort(rng.integers(0, 30, size=70))
    sims = cb.normalize_rows(ztxt) @ cb.normalize_rows(zimg).T  # [T, I]
    want = {}
    for k in (1, 5, 10):
        top = np.argsort(-sims, axis=1)[:, :k]
        want[f"image_retrieval_recall@{k}"] = np.mean([text_image[t] in top[t] for t in range(70)])
        top_t = np.argsort(-sims.T, axis=1)[:, :k]
        want[f"text_retrieval_recall@{k}"] = np.mean([bool(set(top_t[i]) & set(np.flatnonzero(text_image == i)))
                                                      for i in range(30)])
    for chunk in (7, 1024):
        assert cb.retrieval_metrics(zimg, ztxt, text_image, (1, 5, 10), chunk=chunk) == pytest.approx(want)


# ------------------------------------------------------------------ the suite on generated folders
def test_suite_writes_clip_benchmarks_files_and_resumes(tmp_path, model):
    _, tower, params = model
    make_classification(tmp_path / "data")
    make_retrieval(tmp_path / "data")
    out = tmp_path / "results"
    predict = predict_fn(tower, params)
    metrics = suite(tmp_path / "data", out, ["wds/wds_toy", "wds_toy_captions"]).evaluate(predict)
    assert sorted(metrics) == sorted([f"wds/wds_toy/{k}" for k in ("acc1", "acc5", "mean_per_class_recall")] + [
        f"wds_toy_captions/{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)])
    path = out / "wds_toy_random_ViT-B-32-tiny_en_zeroshot_classification.json"
    dump = json.loads(path.read_text())
    assert dump == {"dataset": "wds/wds_toy", "model": "ViT-B-32-tiny", "pretrained": "random",
                    "task": "zeroshot_classification", "language": "en", "metrics": dump["metrics"]}
    assert (out / "wds_toy_captions_random_ViT-B-32-tiny_en_zeroshot_retrieval.json").is_file()
    assert len((out / "benchmark.csv").read_text().splitlines()) == 3
    dump["metrics"]["acc1"] = -1.0  # resumable: a dataset with a result file is read back, not rerun
    path.write_text(json.dumps(dump))
    again = suite(tmp_path / "data", out, ["wds/wds_toy"]).evaluate(lambda batch: pytest.fail("ran again"))
    assert again["wds/wds_toy/acc1"] == -1.0


def test_bad_folders_end_in_one_line_naming_the_file(tmp_path, model):
    _, tower, params = model
    predict = predict_fn(tower, params)
    folder = make_classification(tmp_path / "data", n=10)
    checks = [
        (lambda: os.remove(os.path.join(folder, "classnames.txt")), "classnames.txt"),
        (lambda: os.remove(os.path.join(folder, "test", "0.tar")), "0.tar"),
        (lambda: os.remove(os.path.join(folder, "test", "nshards.txt")), "nshards.txt"),
    ]
    for i, (break_it, named) in enumerate(checks):
        break_it()
        with pytest.raises(DataError) as err:
            suite(tmp_path / "data", tmp_path / f"out{i}", ["wds_toy"]).evaluate(predict)
        assert named in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="folder not found: .*nowhere"):
        suite(tmp_path / "data", tmp_path / "out", ["nowhere"]).evaluate(predict)


# ------------------------------------------------------------------ peer: clip_benchmark's own run
def test_metrics_equal_clip_benchmarks_own_run_of_the_open_clip_model(tmp_path, model, monkeypatch):
    pytest.importorskip("clip_benchmark")
    pytest.importorskip("webdataset")
    import open_clip
    import torch
    from clip_benchmark.datasets.builder import build_wds_dataset, image_captions_collate_fn
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval
    from torchvision import transforms

    oc, tower, params = model
    make_classification(tmp_path, n=200)
    make_retrieval(tmp_path, n=60)
    ours = suite(tmp_path, tmp_path / "out", ["wds/wds_toy", "wds/wds_toy_captions"]).evaluate(predict_fn(tower, params))
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    theirs = {}

    def accuracy(output, target, topk=(1,)):
        """clip_benchmark 1.6.2's own accuracy() but for `keepdim=True` (its float() of a [1] array
        is a TypeError under NumPy 2.4): everything else in this run is its code."""
        pred = output.topk(max(topk), 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [float(correct[:k].reshape(-1).float().sum(0).cpu().numpy()) / len(target) for k in topk]

    monkeypatch.setattr(zeroshot_classification, "accuracy", accuracy)
    with torch.no_grad():
        data = build_wds_dataset("wds_toy", transform, split="test", data_dir=str(tmp_path / "wds_toy"))
        loader = torch.utils.data.DataLoader(data, batch_size=32)
        metrics = zeroshot_classification.evaluate(oc, loader, tokenizer, data.classes, data.templates, device="cpu",
                                                   amp=False)
        theirs.update({f"wds/wds_toy/{k}": v for k, v in metrics.items()})
        data = build_wds_dataset("wds_toy_captions", transform, split="test",
                                 data_dir=str(tmp_path / "wds_toy_captions"))
        loader = torch.utils.data.DataLoader(data, batch_size=32, collate_fn=image_captions_collate_fn)
        metrics = zeroshot_retrieval.evaluate(oc, loader, tokenizer, device="cpu", amp=False, recall_k_list=[1, 5, 10])
        theirs.update({f"wds/wds_toy_captions/{k}": v for k, v in metrics.items()})
    assert sorted(ours) == sorted(theirs)
    print("\n" + "\n".join(f"{k}: jaxsup {ours[k]:.6f} clip_benchmark {theirs[k]:.6f}" for k in sorted(theirs)))
    for key in theirs:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-5), key
    assert 0 < theirs["wds/wds_toy/acc1"] < 1  # neither degenerate extreme


# ------------------------------------------------------------------ python -m jaxsup.eval --suite clip_benchmark
@pytest.mark.slow  # ~60 s on 2 cores: a digits run, its zero-shot eval, one eval subprocess
def test_the_command_on_the_digits_gives_the_configs_own_zero_shot_top1(tmp_path):
    """The 360 test digits written as a CLIP_benchmark folder (grey PNGs, the config's class names, the
    "generic" templates, which the config's zero_shot entry is switched to): `jaxsup.eval --suite clip_benchmark` on a digits run gives the acc1 that the config's own
    zero_shot evaluator gives on the same images and prompts."""
    from jaxsup import eval as eval_lib
    from jaxsup.data.datasets import digits, splits
    from jaxsup.data.host import image_text

    from helpers import apply_overrides
    from test_interop_commands import CONFIG, cli
    from test_interop_hf import digits_run

    templates = image_text.TEMPLATE_SETS["generic"]
    config, workdir = digits_run(str(tmp_path / "run"))
    config = apply_overrides(config, {"evals.zero_shot.templates": "generic"})
    top1 = eval_lib.evaluate(config, workdir=workdir)["zero_shot/top1"]
    source = splits.open_split(config.data, "test")
    folder = tmp_path / "data" / "digits"
    write_shards(str(folder / "test"), [{"png": png(source[i]["image"][..., 0]), "cls": str(source[i]["label"]).encode()}
                                         for i in range(len(source))], per_shard=100)
    (folder / "classnames.txt").write_text("\n".join(digits.CLASS_NAMES) + "\n")
    (folder / "zeroshot_classification_templates.txt").write_text("\n".join(t.replace("{name}", "{c}") for t in templates))
    done = cli("jaxsup.eval", "--config", CONFIG, "--workdir", workdir, "--suite", "clip_benchmark",
               "--datasets", "digits", "--dataset_root", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"),
               "--suite_preprocess", "decode:channels=1", "--suite_preprocess", "image_to_float",
               "--config.data.name", "imagenet2012")  # not prepared here: the suite reads no training data
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nzero_shot/top1 {top1:.6f}, suite {printed}")
    assert printed["clip_benchmark/digits/acc1"] == pytest.approx(top1, abs=1e-6)
    result = json.loads((tmp_path / "out" / "digits_run_two_tower_en_zeroshot_classification.json").read_text())
    assert result["metrics"]["acc1"] == pytest.approx(top1, abs=1e-6) and result["pretrained"] == "run"
