"""CLIP_benchmark's webdataset eval sets, read from a local folder, with its metrics and result files
(evaluator "clip_benchmark"; `python -m jaxsup.eval --suite clip_benchmark`, docs/clip_benchmark.md).

A dataset folder (CLIP_benchmark's `wds_*` layout, as `clip_benchmark_export_wds` writes it):
    <split>/nshards.txt, <split>/0.tar ... <split>/{n-1}.tar   samples <key>.{webp|png|jpg|jpeg} +
                                                               <key>.cls (class id) or <key>.txt (captions, one a line)
    classnames.txt, zeroshot_classification_templates.txt     (classification: templates use "{c}")
    dataset_type.txt                                           "retrieval" (absent: classification)
Never downloads. Metrics as CLIP_benchmark 1.6.2 computes them (its metrics.zeroshot_classification and
metrics.zeroshot_retrieval modules):
  classification  acc1, acc5 (NaN under 5 classes), mean_per_class_recall (balanced accuracy);
                  classifier row = unit mean of the class's unit prompt embeddings (zero_shot.text_classifier)
  retrieval       image_retrieval_recall@k (per caption: its image in the top k images),
                  text_retrieval_recall@k (per image: one of its captions in the top k captions);
                  similarities computed a block of queries at a time (25k captions fit).
Each dataset writes `{dataset}_{pretrained}_{model}_{language}_{task}.json` ({"dataset", "model",
"pretrained", "task", "metrics", "language"}) to cfg.output_dir and is skipped (its file read back) when
that file exists: a stopped suite resumes per dataset; benchmark.csv gathers every row.

cfg fields: root (a folder of dataset folders, or a path with "{dataset}"), datasets (names, a "wds/"
prefix is dropped), split ("test"), batch_size, tokenizer, max_len, preprocess (image ops from the
encoded bytes, e.g. ("decode", "resize_small:224", "central_crop:224", "normalize:...")), ks ((1, 5, 10)),
output_dir, model / pretrained (labels in the result files), language ("en").
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import tarfile
from typing import Any, Iterator, Sequence

import jax
import numpy as np

from jaxsup import registry
from jaxsup.data.host import image_text, preprocess as preprocess_lib
from jaxsup.errors import ConfigError, DataError
from jaxsup.evaluators.base import Predict
from jaxsup.evaluators.features import normalize_rows, predict_rows, topk_correct
from jaxsup.evaluators.retrieval import best_correct_rank, recall_at
from jaxsup.evaluators.zero_shot import text_classifier

log = logging.getLogger("jaxsup")
IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")  # CLIP_benchmark's order of preference
TASKS = {"classification": "zeroshot_classification", "retrieval": "zeroshot_retrieval"}
OUTPUT = "{dataset}_{pretrained}_{model}_{language}_{task}.json"  # CLIP_benchmark's default --output


# ------------------------------------------------------------------ the layout
def dataset_dir(root: str, name: str) -> str:
    """The folder of dataset `name` ("wds/" dropped): root formatted with {dataset}, else root/name."""
    name = name.removeprefix("wds/")
    return root.format(dataset=name) if "{dataset}" in root else os.path.join(root, name)


def read_lines(path: str) -> list[str]:
    """Stripped lines of a text file; DataError naming it when absent."""
    if not os.path.isfile(path):
        raise DataError(f"CLIP_benchmark dataset file not found: {path!r}.")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f.read().splitlines()]


def dataset_type(folder: str) -> str:
    """"classification" or "retrieval" (dataset_type.txt; absent: classification)."""
    path = os.path.join(folder, "dataset_type.txt")
    kind = read_lines(path)[0].lower() if os.path.isfile(path) else "classification"
    if kind not in TASKS:
        raise DataError(f"{path!r}: dataset type {kind!r} is not supported (expected one of {sorted(TASKS)}).")
    return kind


def shard_paths(folder: str, split: str) -> list[str]:
    """<split>/0.tar ... from <split>/nshards.txt; DataError naming the first missing file."""
    count_file = os.path.join(folder, split, "nshards.txt")
    lines = read_lines(count_file)
    if not lines or not lines[0].isdigit():
        raise DataError(f"{count_file!r} must hold the number of shards, got {lines[:1]}.")
    paths = [os.path.join(folder, split, f"{i}.tar") for i in range(int(lines[0]))]
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"Shard {path!r} (named by {count_file!r}) not found.")
    return paths


def samples(paths: Sequence[str]) -> Iterator[tuple[str, str, dict[str, bytes]]]:
    """(shard, key, {extension: bytes}) per sample, in shard order (a sample's files are adjacent)."""
    for path in paths:
        try:
            with tarfile.open(path) as tar:
                key, parts = None, {}
                for member in tar:
                    if not member.isfile():
                        continue
                    base = os.path.basename(member.name)
                    stem, _, ext = base.partition(".")
                    if stem != key and parts:
                        yield path, key, parts
                        parts = {}
                    key = stem
                    parts[ext.lower()] = tar.extractfile(member).read()
                if parts:
                    yield path, key, parts
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{path!r} is not a readable tar shard ({type(e).__name__}: {e}).") from None


def sample_image(path: str, key: str, parts: dict[str, bytes]) -> bytes:
    for ext in IMAGE_EXTS:
        if ext in parts:
            return parts[ext]
    raise DataError(f"{path!r}: sample {key!r} has no image ({'/'.join(IMAGE_EXTS)}); it has {sorted(parts)}.")


def sample_field(path: str, key: str, parts: dict[str, bytes], ext: str) -> str:
    if ext not in parts:
        raise DataError(f"{path!r}: sample {key!r} has no .{ext} file; it has {sorted(parts)}.")
    return parts[ext].decode("utf-8")


# ------------------------------------------------------------------ metrics (CLIP_benchmark's definitions)
def classification_metrics(zimg: np.ndarray, labels: np.ndarray, classifier: np.ndarray) -> dict[str, float]:
    """zimg [N, E], labels [N], classifier [K, E] -> acc1, acc5 (NaN for K < 5), mean_per_class_recall."""
    scores = normalize_rows(zimg) @ classifier.T
    top1 = topk_correct(scores, labels, 1)
    recall = [top1[labels == k].mean() for k in np.unique(labels)]
    acc5 = float(topk_correct(scores, labels, 5).mean()) if classifier.shape[0] >= 5 else math.nan
    return {"acc1": float(top1.mean()), "acc5": acc5, "mean_per_class_recall": float(np.mean(recall))}


def chunked_ranks(queries: np.ndarray, items: np.ndarray, query_groups: np.ndarray, item_groups: np.ndarray,
                  chunk: int = 1024) -> np.ndarray:
    """[Q] rank of each query's best correct item; similarities [chunk, M] at a time."""
    items = normalize_rows(items)
    return np.concatenate([
        best_correct_rank(normalize_rows(queries[s:s + chunk]) @ items.T, query_groups[s:s + chunk], item_groups)
        for s in range(0, len(queries), chunk)])


def retrieval_metrics(zimg: np.ndarray, ztxt: np.ndarray, text_image: np.ndarray, ks: Sequence[int],
                      chunk: int = 1024) -> dict[str, float]:
    """zimg [I, E], ztxt [T, E], text_image [T] (each caption's image) -> CLIP_benchmark's recalls."""
    images = np.arange(len(zimg))
    out = {}
    for k, r in recall_at(chunked_ranks(ztxt, zimg, text_image, images, chunk), ks).items():
        out[f"image_retrieval_recall@{k}"] = r
    for k, r in recall_at(chunked_ranks(zimg, ztxt, images, text_image, chunk), ks).items():
        out[f"text_retrieval_recall@{k}"] = r
    return out


# ------------------------------------------------------------------ the evaluator
@registry.register("evaluator", "clip_benchmark")
class ClipBenchmarkEvaluator:
    """See the module docstring."""

    def __init__(self, cfg: Any, data_cfg: Any, batch_sharding: jax.sharding.Sharding):
        del data_cfg  # the suite reads its own folders
        for field in ("root", "datasets", "output_dir", "preprocess", "tokenizer"):
            if not cfg.get(field):
                raise ConfigError(f"clip_benchmark evaluator: cfg.{field} is required.")
        self.cfg, self.sharding = cfg, batch_sharding
        self.preprocess = preprocess_lib.build(tuple(cfg.preprocess))
        self.tokenizer = image_text.cached_tokenizer(cfg.tokenizer)
        self.ks = tuple(cfg.get("ks", (1, 5, 10)))

    def output_path(self, name: str, task: str) -> str:
        c = self.cfg
        slug = name.removeprefix("wds/").replace("/", "_")
        return os.path.join(c.output_dir, OUTPUT.format(dataset=slug, pretrained=c.get("pretrained", "jaxsup"),
                                                        model=c.get("model", "jaxsup"), language=c.get("language", "en"),
                                                        task=task))

    def embed_images(self, predict: Predict, paths: Sequence[str], field: str | None) -> tuple[np.ndarray, list]:
        """zimg [N, E] of every sample, and its .cls label (int) or .txt captions (list of lines)."""
        bs, zimg, images, extra = self.cfg.batch_size, [], [], []
        for n, (path, key, parts) in enumerate(samples(paths), 1):
            images.append(self.preprocess({"image": sample_image(path, key, parts)})["image"])
            text = sample_field(path, key, parts, field)
            extra.append(int(text.strip()) if field == "cls" else text.splitlines())
            if len(images) == bs:
                zimg.append(predict_rows(predict, {"image": np.stack(images)}, "zimg", bs, self.sharding))
                images = []
                log.info("clip_benchmark: %d images", n)
        if images:
            zimg.append(predict_rows(predict, {"image": np.stack(images)}, "zimg", bs, self.sharding))
        if not zimg:
            raise DataError(f"CLIP_benchmark shards {list(paths)[:2]} hold no samples.")
        return np.concatenate(zimg), extra

    def embed_texts(self, predict: Predict, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer.encode(list(texts), self.cfg.get("max_len", 77))
        return predict_rows(predict, {"tokens": tokens}, "ztxt", self.cfg.batch_size, self.sharding)

    def run_dataset(self, predict: Predict, folder: str, kind: str) -> dict[str, float]:
        """The metrics of one dataset folder of type `kind`."""
        paths = shard_paths(folder, self.cfg.get("split", "test"))
        if kind == "retrieval":
            zimg, captions = self.embed_images(predict, paths, "txt")
            text_image = np.asarray([i for i, lines in enumerate(captions) for _ in lines])
            ztxt = self.embed_texts(predict, [t for lines in captions for t in lines])
            return retrieval_metrics(zimg, ztxt, text_image, self.ks)
        classes = read_lines(os.path.join(folder, "classnames.txt"))
        templates = read_lines(os.path.join(folder, "zeroshot_classification_templates.txt"))
        prompts = [t.format(c=c) for c in classes for t in templates]  # class-major, as text_classifier needs
        classifier = text_classifier(self.embed_texts(predict, prompts), len(classes))
        zimg, labels = self.embed_images(predict, paths, "cls")
        labels = np.asarray(labels)
        if labels.min() < 0 or labels.max() >= len(classes):
            raise DataError(f"{folder!r}: labels span [{labels.min()}, {labels.max()}] but classnames.txt has "
                            f"{len(classes)} names.")
        return classification_metrics(zimg, labels, classifier)

    def evaluate(self, predict: Predict) -> dict[str, float]:
        os.makedirs(self.cfg.output_dir, exist_ok=True)
        results, rows = {}, []
        for name in self.cfg.datasets:
            folder = dataset_dir(self.cfg.root, name)
            if not os.path.isdir(folder):
                raise DataError(f"CLIP_benchmark dataset folder not found: {folder!r}.")
            kind = dataset_type(folder)
            out = self.output_path(name, TASKS[kind])
            if os.path.isfile(out):
                with open(out) as f:
                    dump = json.load(f)
                log.info("clip_benchmark: %s done already (%s)", name, out)
            else:
                metrics = self.run_dataset(predict, folder, kind)
                dump = {"dataset": name, "model": self.cfg.get("model", "jaxsup"),
                        "pretrained": self.cfg.get("pretrained", "jaxsup"), "task": TASKS[kind], "metrics": metrics,
                        "language": self.cfg.get("language", "en")}
                with open(out + ".tmp", "w") as f:
                    json.dump(dump, f)
                os.replace(out + ".tmp", out)
                log.info("clip_benchmark: %s %s -> %s", name, json.dumps(metrics), out)
            results.update({f"{name}/{k}": float(v) for k, v in dump["metrics"].items()})
            rows.append({**dump["metrics"], **{k: v for k, v in dump.items() if k != "metrics"},
                         "model_fullname": f"{dump['model']} {dump['pretrained']}"})
        write_csv(rows, os.path.join(self.cfg.output_dir, "benchmark.csv"))
        return results


NON_IMAGE_OPS = ("label_to_int32", "class_caption", "tokenize", "keep")


def suite_entry(config: Any, datasets: Sequence[str], root: str, output_dir: str, pretrained: str = "jaxsup",
                preprocess: Sequence[str] = ()) -> dict[str, Any]:
    """The config.evals entry of `jaxsup.eval --suite clip_benchmark`: tokenizer, max_len and batch size
    of the config's first zero_shot entry (else config.clip.tokenizer, the text tower's max_len,
    config.batch_size); image ops `preprocess`, default config.data.eval_preprocess without its
    label / caption / keep ops, after "decode" (the shards hold encoded images)."""
    shot = next((e for e in config.evals.values() if e.get("type") == "zero_shot"), {})
    text = config.model.get("text_kwargs") or {}
    ops = tuple(preprocess) or tuple(op for op in config.data.eval_preprocess
                                     if op.split(":")[0] not in NON_IMAGE_OPS)
    if not ops or ops[0].split(":")[0] != "decode":
        ops = ("decode", *ops)
    return dict(type="clip_benchmark", root=root, datasets=tuple(datasets), output_dir=output_dir,
                batch_size=shot.get("batch_size") or config.batch_size,
                tokenizer=shot.get("tokenizer") or config.clip.get("tokenizer") or "bytes",
                max_len=shot.get("max_len") or text.get("max_len", 77), preprocess=ops, every=0,
                model=config.get("model_name") or "jaxsup", pretrained=pretrained)


def suite_example(entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """A batch of one for the model's shapes (so `--suite` needs no training data): the first dataset's
    first image through the entry's image ops, and one tokenized caption."""
    paths = shard_paths(dataset_dir(entry["root"], entry["datasets"][0]), entry.get("split", "test"))
    for path, key, parts in samples(paths[:1]):
        image = preprocess_lib.build(tuple(entry["preprocess"]))({"image": sample_image(path, key, parts)})["image"]
        tokens = image_text.cached_tokenizer(entry["tokenizer"]).encode(["a photo"], entry["max_len"])
        return {"image": np.asarray(image)[None], "tokens": tokens}
    raise DataError(f"CLIP_benchmark shard {paths[0]!r} holds no samples.")


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    """CLIP_benchmark's `build` table: one row per result, metrics and fields side by side."""
    fields = sorted({k for row in rows for k in row})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
