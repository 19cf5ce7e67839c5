"""Zero-shot classification with the text tower (evaluator "zero_shot").

Class names x templates -> tokens -> predict({"tokens"}) -> "ztxt"; the
classifier row of class k is the unit-normalised mean of its templates'
normalised text embeddings. Images of the split -> predict({"image"}) ->
"zimg"; scores = zimg @ classifier.T; reports top1, top5 (top-k: the true
class has fewer than k strictly higher scores) and count.

cfg fields: split, batch_size, templates (a set name of
jaxsup.data.host.image_text.TEMPLATE_SETS, default "digits_heldout", e.g.
"openai_imagenet" for CLIP's 80 ImageNet prompts, or a list of "...{name}..."
strings), class_names (a set name of CLASS_NAME_SETS: "imagenet2012",
"cifar10", "cifar100", "digits"; or a list; default: the names of the
dataset's ClassLabel `label_key`), tokenizer ("bytes" or a SentencePiece path), max_len,
label_key ("label"); optional dataset / data_dir / preprocess to evaluate on
another dataset than training (e.g. imagenet2012 for a coco-trained CLIP).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxsup import registry
from jaxsup.data.host import image_text
from jaxsup.errors import DataError
from jaxsup.evaluators.base import Predict
from jaxsup.evaluators.features import (
    dataset_class_names, eval_data_config, extract, normalize_rows, predict_rows, topk_correct,
)


def text_classifier(text_embeddings: np.ndarray, num_classes: int) -> np.ndarray:
    """[K*T, E] class-major prompt embeddings -> [K, E] unit mean of the unit rows per class."""
    per_class = normalize_rows(text_embeddings).reshape(num_classes, -1, text_embeddings.shape[-1])
    return normalize_rows(per_class.mean(axis=1))


@registry.register("evaluator", "zero_shot")
class ZeroShotEvaluator:
    """See the module docstring."""

    def __init__(self, cfg: Any, data_cfg: Any, batch_sharding: jax.sharding.Sharding):
        self.cfg = cfg
        self.data_cfg = eval_data_config(cfg, data_cfg)
        self.sharding = batch_sharding
        self.label_key = cfg.get("label_key", "label")
        names = cfg.get("class_names") or dataset_class_names(self.data_cfg, self.label_key)
        self.class_names = image_text.resolve_class_names(names)
        self.templates = image_text.resolve_templates(cfg.get("templates", "digits_heldout"))
        tok = image_text.cached_tokenizer(cfg.get("tokenizer", "bytes"))
        prompts = image_text.class_prompts(self.class_names, self.templates)
        self.prompt_tokens = tok.encode(prompts, cfg.get("max_len", 48))  # [K*T, L]

    def evaluate(self, predict: Predict) -> dict[str, float]:
        ztxt = predict_rows(predict, {"tokens": self.prompt_tokens}, "ztxt", self.cfg.batch_size, self.sharding)
        classifier = text_classifier(ztxt, len(self.class_names))
        got = extract(predict, self.data_cfg, self.cfg.split, self.cfg.batch_size, self.sharding,
                      inputs=("image",), outputs=("zimg",), keys=(self.label_key,))
        labels = got[self.label_key].astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise DataError(f"zero_shot: labels span [{labels.min()}, {labels.max()}] but there are "
                             f"{len(self.class_names)} class names.")
        scores = normalize_rows(got["zimg"]) @ classifier.T
        k5 = min(5, len(self.class_names))
        return {"top1": float(topk_correct(scores, labels, 1).mean()),
                f"top{k5}": float(topk_correct(scores, labels, k5).mean()), "count": float(len(labels))}
