"""Export a run's two-tower parameters for the open_clip ecosystem or as big_vision-style npz.

    python -m jaxsup.export --workdir /tmp/jaxsup/clip_run --format open_clip --out model.safetensors
    python -m jaxsup.export --workdir /tmp/jaxsup/clip_run --format npz --out model.npz
    python -m jaxsup.export --workdir /tmp/jaxsup/clip_run --format hf --out /tmp/hf_model   # a new folder

"open_clip" writes open_clip's state-dict names (its CLIP layout, or the SigLIP
layout for a model with a MAP image head) as safetensors, loadable with
`model.load_state_dict(safetensors.torch.load_file(path), strict=True)` into the
open_clip model of the same shape (jaxsup.interop.presets maps configs both
ways). "npz" writes big_vision's two-tower names. "hf" writes a folder (config.json +
model.safetensors) that `transformers.CLIPModel` / `SiglipModel.from_pretrained` loads; the
activations and LayerNorm epsilons come from the run's config.json (docs/hf_checkpoints.md). Reads only the checkpoint's
params (latest or --step); never overwrites --out.
"""
from __future__ import annotations

import logging

import numpy as np
from absl import flags

from jaxsup import checkpoint, cli
from jaxsup.errors import CheckpointError, ConfigError
from jaxsup.interop import convert, hf

log = logging.getLogger("jaxsup")
FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "The run (its workdir or checkpoints dir) to export.")
    flags.DEFINE_enum("format", "open_clip", list(convert.EXPORT_FORMATS), "Output layout.")
    flags.DEFINE_string("out", None, "Output file (.safetensors for open_clip, .npz for npz; a folder for hf); must not exist.")
    flags.DEFINE_integer("step", -1, "Checkpoint step; -1: the latest.")


def export_run(workdir: str, fmt: str, out: str, step: int = -1,
               model: dict | None = None) -> dict[str, np.ndarray]:
    """Reads the run's params, converts them to `fmt` and writes `out`; returns what was written.

    model: the run's two_tower kwargs for "hf" (default: "model" of the run's config.json)."""
    if fmt not in convert.EXPORT_FORMATS:
        raise ConfigError(f"Unknown --format {fmt!r}; expected one of {convert.EXPORT_FORMATS}.")
    convert.check_out(fmt, out)  # before any reading: a bad --out fails fast
    params = checkpoint.restore_subtree(workdir, "params", step=None if step < 0 else step)
    flat = {k: np.asarray(v) for k, v in convert.flatten(params).items()}
    if not any(k.startswith("img/") for k in flat) or not any(k.startswith("txt/") for k in flat):
        raise CheckpointError(f"{workdir!r} does not hold a two-tower model (params {sorted(flat)[:5]} ...): "
                              "only CLIP / SigLIP two-tower runs export.")
    arrays = convert.export_flat(fmt, flat)
    config = hf.hf_config(flat, model if model is not None else run_model(workdir)) if fmt == "hf" else None
    convert.write(fmt, arrays, out, config)
    log.info("Wrote %d arrays (%s layout) to %s", len(arrays), fmt, out)
    return arrays


def run_model(workdir: str) -> dict:
    """The `model` section of the run's config.json; ConfigError when the run wrote none."""
    saved = checkpoint.read_run_config(workdir)
    if not saved or not isinstance(saved.get("model"), dict):
        raise ConfigError(f"--format hf needs the run's config.json (its model's act / norm_eps): none in {workdir!r}.")
    return saved["model"]


def main(argv) -> None:
    if len(argv) > 1:
        raise ConfigError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir or not FLAGS.out:
        raise ConfigError("jaxsup.export needs --workdir DIR and --out PATH.")
    cli.setup_logging()
    export_run(FLAGS.workdir, FLAGS.format, FLAGS.out, FLAGS.step)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
