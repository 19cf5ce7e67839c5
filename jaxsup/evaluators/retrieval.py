"""Image <-> text retrieval on a split's (image, caption) pairs (evaluator "retrieval").

Row i of the split pairs image i with caption i. Similarities S = zimg @ ztxt.T
[N, N]. Image->text recall@k: the fraction of images whose correct caption
is within the k most similar captions; text->image the same over S.T.

Which items are "correct" (cfg `match`):
  "text" (default): any caption with the same token ids as the pair's own
    caption (and, for text->image, any image paired with such a caption).
    Class-template captions (digits) repeat across images; two identical
    texts cannot be told apart, so either counts. With unique captions this
    equals "pair".
  "pair": only the pair's own item.
  "label": any item of a pair with the same class "label" (class-level retrieval).
Rank of the best correct item = number of items with a strictly higher
similarity than it.

cfg fields: split, batch_size, ks ((1, 5, 10)), match; optional dataset /
data_dir / preprocess. Reports img2txt/r{k}, txt2img/r{k}, r1_chance (R@1 of a
random ranking: the mean over queries of |correct items| / N), count.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from jaxsup import registry
from jaxsup.evaluators.base import Evaluator, Predict
from jaxsup.evaluators.features import extract, normalize_rows
from jaxsup.errors import ConfigError

MATCHES = ("text", "pair", "label")


def check_match(match: str) -> None:
    if match not in MATCHES:
        raise ConfigError(f"Unknown retrieval match {match!r}; expected one of {MATCHES}.")


def match_groups(tokens: np.ndarray, match: str, labels: np.ndarray | None = None) -> np.ndarray:
    """[N] group ids: rows in one group are interchangeable answers."""
    check_match(match)
    if match == "pair":
        return np.arange(len(tokens))
    if match == "label":
        return np.asarray(labels).reshape(-1)
    return np.unique(tokens.reshape(len(tokens), -1), axis=0, return_inverse=True)[1].reshape(-1)


def best_correct_rank(scores: np.ndarray, query_groups: np.ndarray, item_groups: np.ndarray,
                      chunk: int = 1024) -> np.ndarray:
    """[Q] rank of the highest-scoring item of the query's group among all items.

    scores [Q, M]; query_groups [Q], item_groups [M]; rank = count of strictly higher scores.
    """
    ranks = []
    for s in range(0, len(scores), chunk):
        block = scores[s : s + chunk]
        correct = query_groups[s : s + chunk, None] == item_groups[None, :]
        best = np.where(correct, block, -np.inf).max(axis=1, keepdims=True)
        ranks.append((block > best).sum(axis=1))
    return np.concatenate(ranks)


def recall_at(ranks: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    return {k: float((ranks < k).mean()) for k in ks}


def retrieval_metrics(zimg: np.ndarray, ztxt: np.ndarray, groups: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Recall@k both ways for paired zimg, ztxt [N, E] with interchangeable-answer groups [N]."""
    sims = normalize_rows(zimg) @ normalize_rows(ztxt).T
    _, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    out = {"r1_chance": float(sizes[inverse.reshape(-1)].mean() / len(groups))}
    for name, s in (("img2txt", sims), ("txt2img", sims.T)):
        for k, r in recall_at(best_correct_rank(s, groups, groups), ks).items():
            out[f"{name}/r{k}"] = r
    return out


@registry.register("evaluator", "retrieval")
class RetrievalEvaluator(Evaluator):
    """See the module docstring."""

    def __init__(self, cfg: Any, data_cfg: Any, batch_sharding: jax.sharding.Sharding):
        super().__init__(cfg, data_cfg, batch_sharding)
        self.ks = tuple(cfg.get("ks", (1, 5, 10)))
        self.match = cfg.get("match", "text")
        check_match(self.match)

    def evaluate(self, predict: Predict) -> dict[str, float]:
        keys = ("tokens", "label") if self.match == "label" else ("tokens",)
        got = extract(predict, self.data_cfg, self.cfg.split, self.cfg.batch_size, self.sharding,
                      inputs=("image", "tokens"), outputs=("zimg", "ztxt"), keys=keys)
        groups = match_groups(got["tokens"], self.match, got.get("label"))
        metrics = retrieval_metrics(got["zimg"], got["ztxt"], groups, self.ks)
        return {**metrics, "count": float(len(got["tokens"]))}
