"""Evaluate a run's checkpoint or an imported public model with the config's evaluators.

    python -m jaxsup.eval --config configs/clip_digits.py --workdir /tmp/jaxsup/clip_digits
    python -m jaxsup.eval --config configs/zero_shot_imagenet.py --init open_clip:/ckpt/ViT-B-32.safetensors
    python -m jaxsup.eval --config configs/zero_shot_imagenet.py --init hf:/ckpt/clip-vit-base-patch32 \
        --suite clip_benchmark --datasets wds/cifar10,wds/flickr30k --dataset_root /data/clip_benchmark \
        --output_dir /tmp/cb_results       # CLIP_benchmark's wds_* folders and result files (docs/clip_benchmark.md)

Builds the config's task on its mesh, restores only the parameters (a run's
latest or --step checkpoint; or `--init FORMAT:PATH`, FORMAT "open_clip",
"big_vision" or "hf", checked against the model's shapes before anything is placed on
devices), and runs every `config.evals` entry through the jitted `task.predict`:
no optimizer state and no train step is built or compiled. Prints one JSON
line of metrics (and writes it to --results if given).
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags

from jaxsup import checkpoint, cli, experiment, sharding
from jaxsup.errors import ConfigError
from jaxsup.evaluators import clip_benchmark
from jaxsup.interop import convert

log = logging.getLogger("jaxsup")
FLAGS = flags.FLAGS


def define_flags() -> None:
    cli.define_config_flags("A run's workdir: evaluate its checkpoint (or use --init).")
    flags.DEFINE_string("init", None, "FORMAT:PATH of a public checkpoint (open_clip:*.safetensors|.pt|.bin, "
                        "big_vision:*.npz, hf:DIR) instead of --workdir.")
    flags.DEFINE_integer("step", -1, "Checkpoint step of --workdir; -1: the latest.")
    flags.DEFINE_string("results", None, "Also write the metrics as JSON to this file.")
    flags.DEFINE_enum("suite", None, ["clip_benchmark"], "Run this suite instead of config.evals.")
    flags.DEFINE_list("datasets", [], "--suite clip_benchmark: dataset names (folders under --dataset_root).")
    flags.DEFINE_string("dataset_root", None, "--suite clip_benchmark: folder of the datasets (or a path with {dataset}).")
    flags.DEFINE_string("output_dir", None, "--suite clip_benchmark: where the result JSON files go.")
    flags.DEFINE_multi_string("suite_preprocess", [], "--suite: image ops from the encoded image (default: the "
                              "config's eval image ops after decode).")


def abstract_variables(task: Any, example: dict[str, Any]) -> tuple[Any, Any]:
    """(params, task_state) of the task's init as ShapeDtypeStructs (nothing computed)."""
    rng = jax.random.key(0)
    return jax.eval_shape(lambda: task.init(rng, example))


def imported_params(spec: str, abstract: Any, shardings: Any) -> Any:
    """Params from a public checkpoint "FORMAT:PATH", checked against `abstract`, on `shardings`."""
    flat_abstract = convert.flatten(abstract)
    expected = {k: tuple(v.shape) for k, v in flat_abstract.items()}
    flat = convert.load_for_model(spec, expected, {k: np.dtype(v.dtype) for k, v in flat_abstract.items()})
    return jax.device_put(convert.nest(flat), shardings)


def restored_variables(workdir: str, step: int, abstract: tuple[Any, Any], shardings: tuple[Any, Any]) -> tuple[Any, Any]:
    """(params, task_state) of a run's checkpoint onto `shardings`."""
    step_arg = None if step < 0 else step
    out = []
    for name, tree, shards in zip(("params", "task_state"), abstract, shardings):
        if not jax.tree.leaves(tree):
            out.append(tree)
            continue
        target = checkpoint.abstract_tree(tree, shards)
        out.append(checkpoint.restore_subtree(workdir, name, target=target, step=step_arg))
    return out[0], out[1]


def evaluate(config: Any, workdir: str | None = None, init: str | None = None, step: int = -1,
             example: dict[str, Any] | None = None) -> dict[str, float]:
    """Runs config.evals on a checkpoint (workdir) or an imported model (init); returns the metrics.

    example: a batch of one giving the model's input shapes (default: config.data's first train example)."""
    if (workdir is None) == (init is None):
        raise ConfigError("jaxsup.eval needs exactly one of --workdir DIR or --init FORMAT:PATH.")
    mesh = sharding.make_mesh(config.mesh)
    data = experiment.data_info(config, mesh, example)
    task = experiment.build_task(config, mesh, data)
    example = jax.tree.map(lambda x: np.asarray(x)[:1], data.example)
    abstract = abstract_variables(task, example)
    shardings = tuple(sharding.tree_shardings(t, config.partition_rules, mesh) for t in abstract)
    if init is not None:
        params, task_state = imported_params(init, abstract[0], shardings[0]), abstract[1]
        if jax.tree.leaves(task_state):
            raise ConfigError("--init loads parameters only; this model also has state (e.g. BatchNorm statistics).")
    else:
        params, task_state = restored_variables(workdir, step, abstract, shardings)
    frozen = task.load_frozen()
    predict = jax.jit(task.predict)
    results: dict[str, float] = {}
    for name, evaluator in experiment.build_evaluators(config, mesh).items():
        start = time.perf_counter()
        metrics = evaluator.evaluate(lambda batch: predict(params, task_state, frozen, batch))
        results.update({f"{name}/{k}": v for k, v in metrics.items()})
        log.info("%s: %s (%.1f s)", name, json.dumps(metrics), time.perf_counter() - start)
    return results


def with_suite(config: Any) -> tuple[Any, dict[str, Any]]:
    """(config with --suite's entry as its only eval, a batch of one for the shapes from the suite's data)."""
    if not FLAGS.datasets or not FLAGS.dataset_root or not FLAGS.output_dir:
        raise ConfigError("--suite clip_benchmark needs --datasets, --dataset_root and --output_dir.")
    source = FLAGS.init.partition(":")[2] if FLAGS.init else (FLAGS.workdir or "")
    entry = clip_benchmark.suite_entry(config, FLAGS.datasets, FLAGS.dataset_root, FLAGS.output_dir,
                                       os.path.basename(os.path.normpath(source)), FLAGS.suite_preprocess)
    with config.unlocked():
        config.evals = ml_collections.ConfigDict({"clip_benchmark": entry})
    return config, clip_benchmark.suite_example(entry)  # the config's training data is not read


def main(argv) -> None:
    if len(argv) > 1:
        raise ConfigError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.config is None:
        raise ConfigError("--config is required.")
    cli.setup_logging()
    config, example = with_suite(FLAGS.config) if FLAGS.suite else (FLAGS.config, None)
    results = evaluate(config, FLAGS.workdir, FLAGS.init, FLAGS.step, example)
    line = json.dumps(results, sort_keys=True)
    print(line)
    if FLAGS.results:
        with open(FLAGS.results, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
