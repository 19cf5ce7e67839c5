"""G-SimCLR's pseudo-classes: k-means on an earlier encoder's features of the train split.

    python scripts/gsimclr_pseudo_classes.py --config configs/gsimclr_digits.py \
        --run /tmp/jaxsup/simclr_seed0 --out /tmp/jaxsup/guide_seed0.npz [--k 10] [--seed 0]

--run is a finished run of task "simclr" (its encoder: params/encoder,
task_state/encoder; model from its config.json). Every example of the
config's train split is embedded, L2-normalised and clustered into k classes
(`jaxsup.data.loader.guided_batches.kmeans`); the .npz is what config.data.batch_guide
names (`:guide=PATH` in gsimclr_digits.py). Prints the cluster sizes, the
examples an epoch keeps, and, where the split has labels, the clusters' purity
and the share of negative pairs in a batch that are of one true class
("false negatives") in random vs guided batches.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def encoder_features(run: str, data_cfg, split: str, batch_size: int) -> dict[str, np.ndarray]:
    """{"features": [N, D], "index": [N], "label": [N] if present} of `split`, in split order."""
    import jax

    from jaxsup import sharding
    from jaxsup.config import teacher_spec
    from jaxsup.data.loader.pipeline import eval_global_batches
    from jaxsup.tasks.common import FrozenModel

    mesh = sharding.make_mesh((("data", -1),))
    batches = eval_global_batches(data_cfg, split, batch_size, sharding.batch_sharding(mesh, ("data",)))
    first = next(batches)
    spec = teacher_spec(run, params_subtree="params/encoder", state_subtree="task_state/encoder")
    model = FrozenModel(spec, first["image"][:1], what="earlier encoder")
    variables = model.load(mesh)
    embed = jax.jit(lambda v, x: model.apply(v, x)[0])
    out: dict[str, list] = {"features": [], "index": [], "label": []}
    for batch in (first, *batches):
        keep = np.asarray(batch["mask"]) > 0
        out["features"].append(np.asarray(embed(variables, batch["image"]), np.float64)[keep])
        out["index"].append(np.asarray(batch["index"])[keep])
        if "label" in batch:
            out["label"].append(np.asarray(batch["label"])[keep])
    result = {k: np.concatenate(v) for k, v in out.items() if v}
    order = np.argsort(result["index"])
    return {k: v[order] for k, v in result.items()}


def same_class_negative_share(blocks: np.ndarray, labels: np.ndarray) -> float:
    """Share of the pairs (i != j) within each row of `blocks` [m, B] whose true labels agree."""
    y = labels[blocks]
    same = (y[:, :, None] == y[:, None, :]).sum() - y.size
    return float(same / (y.shape[0] * y.shape[1] * (y.shape[1] - 1)))


def report(guide: np.ndarray, labels: np.ndarray | None, batch: int, seed: int) -> dict[str, float]:
    """Cluster statistics and, with true labels, false-negative shares (random vs guided, epoch 0)."""
    from jaxsup.data.loader.guided_batches import GuidedOrder
    from jaxsup.data.loader.pipeline import epoch_order

    order = GuidedOrder(guide, batch)
    stats = {"k": int(len(order.classes)), "cluster_sizes": np.bincount(guide).tolist(),
             "epoch_examples": order.epoch_length, "split_examples": int(len(guide))}
    if labels is not None:
        purity = sum(np.bincount(labels[guide == c]).max() for c in np.unique(guide)) / len(guide)
        n_rand = len(guide) // batch * batch
        stats.update(purity=float(purity),
                     false_negatives_random=same_class_negative_share(
                         epoch_order(seed, 0, len(guide))[:n_rand].reshape(-1, batch), labels),
                     false_negatives_guided=same_class_negative_share(order(seed, 0).reshape(-1, batch), labels))
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the G-SimCLR config (its data and batch size)")
    parser.add_argument("--run", required=True, help="workdir of the earlier simclr run")
    parser.add_argument("--out", required=True)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oracle", action="store_true",
                        help="use the true labels as the classes (the mechanism's upper bound; needs labels)")
    args = parser.parse_args(argv)

    from jaxsup.config import load_config
    from jaxsup.data.loader.guided_batches import kmeans, save_guide

    config = load_config(args.config if os.path.isabs(args.config) else os.path.join(ROOT, args.config))
    data = encoder_features(args.run, config.data, config.data.train_split, 360)
    feats = data["features"] / np.linalg.norm(data["features"], axis=1, keepdims=True)
    guide = data["label"].astype(np.int32) if args.oracle else kmeans(feats, args.k, args.seed)
    save_guide(args.out, guide, config.data.train_split, config.data.name)
    print(json.dumps(report(guide, data.get("label"), config.batch_size, args.seed)))


if __name__ == "__main__":
    main()
