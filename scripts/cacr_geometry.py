"""CACR's mechanism, measured: where trained encoders put positives and nearest negatives.

    python scripts/cacr_geometry.py --root /tmp/jaxsup/cacr --seeds 0 1 2 \
        --arm "NT-Xent 4 views=configs/cacr_digits.py:ntxent" --arm "CACR 4 views=configs/cacr_digits.py"

For each finished run of `scripts/seeds_table.py` (ROOT/<arm>/seed<k>), the
360 test digits are augmented into K views (the run's simclr.augment, one
fixed key) and embedded by the run's encoder + head (unit-norm z). Printed per
arm, mean ± std over seeds, in squared distances ||z_a - z_b||^2 in [0, 4]:
  pos_mean    mean over images of the mean distance between its views
  pos_worst   mean over images of the largest distance between two of its views
  neg_nearest mean over views of the distance to the nearest view of another image
  nearest_same_class  share of those nearest negatives that are of the view's class
CACR pulls the farthest positives hardest (pos_worst) and pushes the nearest
negatives hardest (neg_nearest).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def geometry(z: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The four statistics of views z [K, N, E] (unit rows) of N images with labels [N]."""
    k, n, _ = z.shape
    pos = ((z[:, None] - z[None, :]) ** 2).sum(-1)  # [K, K, N]
    off = ~np.eye(k, dtype=bool)
    flat = z.reshape(k * n, -1)
    d = (flat * flat).sum(1)[:, None] + (flat * flat).sum(1)[None] - 2 * flat @ flat.T
    image = np.arange(k * n) % n
    d[image[:, None] == image[None, :]] = np.inf
    nearest = d.argmin(1)
    return {"pos_mean": float(pos[off].mean()), "pos_worst": float(pos.max(axis=(0, 1)).mean()),
            "neg_nearest": float(d.min(1).mean()),
            "nearest_same_class": float(np.mean(labels[image] == labels[image[nearest]]))}


def run_geometry(spec: str, workdir: str, seed: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    from jaxsup import experiment, sharding
    from jaxsup.config import load_config
    from jaxsup.data.device.augment import simclr_augment
    from jaxsup.data.loader.pipeline import eval_global_batches
    from jaxsup.eval import abstract_variables, restored_variables

    path, _, arg = spec.partition(":")
    config = load_config(os.path.join(ROOT, path) + (f":{arg}" if arg else ""), {"seed": seed})
    mesh = sharding.make_mesh((("data", 1),))
    data = experiment.data_info(config, mesh)
    task = experiment.build_task(config, mesh, data)
    abstract = abstract_variables(task, jax.tree.map(lambda x: np.asarray(x)[:1], data.example))
    shardings = tuple(sharding.tree_shardings(t, config.partition_rules, mesh) for t in abstract)
    params, state = restored_variables(workdir, -1, abstract, shardings)
    batch = next(eval_global_batches(config.data, "test", 360, sharding.batch_sharding(mesh, ("data",))))
    views = config.simclr.views
    keys = jax.random.split(jax.random.key(1234), views)
    images = jnp.concatenate([simclr_augment(key, batch["image"], **task.augment) for key in keys])
    z = np.asarray(task.predict(params, state, {}, {"image": images})["z"], np.float64)
    return geometry(z.reshape(views, 360, -1), np.asarray(batch["label"]))


def main(argv: list[str] | None = None) -> None:
    from seeds_table import run_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--arm", action="append", required=True, help="name=config[:switches], as in seeds_table")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    table = {}
    for arm in args.arm:
        name, _, spec = arm.partition("=")
        per_seed = [run_geometry(spec, run_dir(args.root, name, s), s) for s in args.seeds]
        table[name] = {k: [r[k] for r in per_seed] for k in per_seed[0]}
        print(name, json.dumps({k: f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0:.3f}"
                                for k, v in table[name].items()}, ensure_ascii=False), flush=True)
    with open(os.path.join(args.root, "geometry.json"), "w") as f:
        json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
