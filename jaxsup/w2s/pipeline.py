"""Weak-to-strong pipeline driver: weak supervisor -> weak labels -> strong ceiling ->
strong students (soft CE, aux confidence loss) -> PGR report, over seeds.

    python -m jaxsup.w2s --config configs/w2s_digits.py --workdir DIR [--seeds 0,1,2] \
        [--config.stages.weak.total_steps=50 ...]

Per seed s, in DIR/seed_<s>/:
  1. weak/          train_and_evaluate(stages.weak) on splits.weak (ground truth)
  2. weak_labels.npz  the weak model's softmax on splits.strong, keyed by example index
  3. ceiling/       stages.ceiling on splits.strong with ground truth
  4. student/, student_aux/  stages.student(_aux) on splits.strong with the weak labels
Each stage is a normal jaxsup.train run in its own workdir, so a killed
pipeline resumes where it stopped (finished stages only re-evaluate). Splits
are checked pairwise disjoint before anything trains. Then
DIR/report.{json,md,png} (jaxsup.w2s.pgr) hold the test accuracies and
PGR = (acc_w2s - acc_weak) / (acc_ceiling - acc_weak), averaged over seeds.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any, Sequence

import jax
import numpy as np
from absl import app, flags

from jaxsup import cli, sharding
from jaxsup.config import teacher_spec
from jaxsup.data.loader.pipeline import eval_global_batches
from jaxsup.data.datasets.splits import check_disjoint_splits
from jaxsup.data.labels.weak_labels import save_weak_labels
from jaxsup.errors import ConfigError
from jaxsup.w2s import pgr
from jaxsup.tasks.common import FrozenModel
from jaxsup.train import train_and_evaluate

log = logging.getLogger("jaxsup")
FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line of `python -m jaxsup.w2s` (defined only when run as a program)."""
    cli.define_config_flags("The pipeline directory: one sub-directory per seed and stage; resumes from it.")
    flags.DEFINE_string("seeds", None, "Comma-separated seeds; default config.seeds.")

STRONG_STAGES = ("ceiling", "student", "student_aux")
STUDENT_STAGES = ("student", "student_aux")
LABELS_FILE = "weak_labels.npz"


def stage_config(config: Any, stage: str, seed: int, seed_dir: str) -> Any:
    """A copy of config.stages[stage] with the seed, splits and paths of this pipeline run."""
    c = copy.deepcopy(config.stages[stage])
    c.seed = seed
    c.data.train_split = config.splits.weak if stage == "weak" else config.splits.strong
    for ev in c.evals.values():
        ev.split = config.splits.test
    if stage in STRONG_STAGES:
        init = config.strong_init
        c.finetune.init_from = init.path
        c.finetune.init_subtree = init.subtree
        c.finetune.init_state_subtree = init.state_subtree
        c.finetune.init_skip = tuple(init.skip)
    if stage in STUDENT_STAGES:
        c.w2s.weak_labels = os.path.join(seed_dir, LABELS_FILE)
        c.w2s.weak_split = config.splits.weak
    return c


def label_split(weak_workdir: str, data_cfg: Any, split: str, mesh_cfg: Any, batch_size: int) -> dict[str, np.ndarray]:
    """The weak run's softmax on every example of `split`, in order.

    Returns {"probs": [N, K] f32, "index": [N], "label": [N] (if the split has labels)}.
    """
    mesh = sharding.make_mesh(mesh_cfg)
    batch_sharding = sharding.batch_sharding(mesh, ("data",))
    batches = eval_global_batches(data_cfg, split, batch_size, batch_sharding)
    first = next(batches)
    model = FrozenModel(teacher_spec(weak_workdir, state_subtree="task_state"), first["image"][:1], what="weak supervisor")
    variables = model.load(mesh)
    probs_of = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x)[0].astype(np.float32), axis=-1),
                       out_shardings=sharding.replicated(mesh))
    out: dict[str, list] = {"probs": [], "index": [], "label": []}
    for batch in (first, *batches):
        keep = np.asarray(jax.device_get(batch["mask"])) > 0
        out["probs"].append(np.asarray(jax.device_get(probs_of(variables, batch["image"])))[keep])
        out["index"].append(np.asarray(jax.device_get(batch["index"]))[keep])
        if "label" in batch:
            out["label"].append(np.asarray(jax.device_get(batch["label"]))[keep])
    return {k: np.concatenate(v) for k, v in out.items() if v}


def write_weak_labels(config: Any, weak_dir: str, seed_dir: str) -> float:
    """Labels splits.strong with the weak run (once); returns the labels' top-1 accuracy (NaN without labels)."""
    path = os.path.join(seed_dir, LABELS_FILE)
    stage = config.stages.weak
    if not os.path.isfile(path):
        out = label_split(weak_dir, stage.data, config.splits.strong, stage.mesh, config.label_batch_size)
        save_weak_labels(path, out["probs"], out["index"], config.splits.strong, stage.data.name)
        if "label" in out:
            np.save(os.path.join(seed_dir, "strong_split_labels.npy"), out["label"][np.argsort(out["index"])])
        log.info("Wrote %d weak labels to %s.", len(out["index"]), path)
    labels_path = os.path.join(seed_dir, "strong_split_labels.npy")
    if not os.path.isfile(labels_path):
        return float("nan")
    with np.load(path) as f:
        probs, index = f["probs"], f["index"]
    return float(np.mean(probs[np.argsort(index)].argmax(-1) == np.load(labels_path)))


def check_pipeline(config: Any) -> None:
    """Raises ConfigError for overlapping splits or stages on different datasets."""
    names = {s: config.stages[s].data.name for s in config.stages}
    if len(set(names.values())) != 1:
        raise ConfigError(f"All w2s stages must use one dataset; got {names}.")
    check_disjoint_splits(config.stages.weak.data, config.splits.to_dict())


def run_seed(config: Any, workdir: str, seed: int) -> dict[str, float]:
    """Runs every stage of one seed (resuming); returns {stage: test metric}."""
    seed_dir = os.path.join(workdir, f"seed_{seed}")
    results: dict[str, float] = {}

    def run(stage: str) -> None:
        log.info("=== seed %d: %s ===", seed, stage)
        metrics = train_and_evaluate(stage_config(config, stage, seed, seed_dir), os.path.join(seed_dir, stage))
        if config.metric not in metrics:
            raise ConfigError(f"Stage {stage!r} reported no {config.metric!r}; it reported {sorted(metrics)}.")
        results[stage] = float(metrics[config.metric])

    run("weak")
    results["weak_labels_on_strong_split"] = write_weak_labels(config, os.path.join(seed_dir, "weak"), seed_dir)
    for stage in STRONG_STAGES:
        if stage in config.stages:
            run(stage)
    with open(os.path.join(seed_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def run_pipeline(config: Any, workdir: str, seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """All seeds, then the report in workdir; returns the summary (see jaxsup.w2s.pgr)."""
    workdir = os.path.abspath(workdir)
    check_pipeline(config)
    seeds = list(config.seeds if seeds is None else seeds)
    if not seeds:
        raise ConfigError("No seeds to run.")
    per_seed = {seed: run_seed(config, workdir, seed) for seed in seeds}
    summary = pgr.summarise(per_seed)
    summary["splits"] = config.splits.to_dict()
    paths = pgr.write_report(summary, workdir)
    log.info("Report: %s", paths)
    print(pgr.markdown_table(summary))
    return summary


def parse_seeds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}.") from err


def main(argv) -> None:
    del argv
    if FLAGS.workdir is None or FLAGS.config is None:
        raise app.UsageError("--config and --workdir are required.")
    cli.setup_logging()
    run_pipeline(FLAGS.config, FLAGS.workdir, parse_seeds(FLAGS.seeds))

