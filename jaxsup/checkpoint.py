"""Orbax checkpoints: save every N steps, keep N, async; restore onto the current
mesh; restore a sub-tree (e.g. a teacher's params) from another run.

Layout: `<workdir>/checkpoints/<step>/{state,meta}`; `state` is the TrainState
pytree, `meta` a JSON dict (the data-iterator position, the config).
Restores are checked against the target first, so a checkpoint from another
model fails with the mismatched keys and shapes named, before anything loads
(dtypes are not compared: a restore casts, e.g. f32 params into a bf16 target).
A run never deletes checkpoints other than by keep-N rotation after a
successful save, and a step that already exists is never written again.
A newest checkpoint that cannot be read is moved aside (never deleted) to
`<workdir>/checkpoints_unreadable/<step>` and the run resumes from the newest
one that restores (`restore_newest_readable`; strict=True stops instead).
"""
from __future__ import annotations

import json
import logging
import os
import signal
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxsup.errors import CheckpointError, ConfigError
from jaxsup.sharding import path_str

log = logging.getLogger("jaxsup")
CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "checkpoints_unreadable"  # where an unreadable step is moved aside, next to CHECKPOINT_DIR


class UnreadableCheckpointError(CheckpointError):
    """A checkpoint's files cannot be read back (corrupt, truncated, or a path Orbax misreads)."""


def short_reason(err: BaseException, limit: int = 160) -> str:
    """The first `limit` characters of an (often 2 KB, multi-line) storage-layer message."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def check_path(path: str) -> None:
    """TensorStore reads '%' in a path as a URL escape: such checkpoints save but never restore."""
    if "%" in path:
        raise CheckpointError(f"Checkpoint path {path!r} contains '%', which Orbax/TensorStore cannot read back; "
                              "choose a directory name without it.")


def checkpoint_dir(workdir_or_path: str) -> str:
    """`<workdir>/checkpoints` if it exists there, else the path itself."""
    sub = os.path.join(workdir_or_path, CHECKPOINT_DIR)
    return sub if os.path.isdir(sub) else workdir_or_path


def read_run_config(path: str) -> dict[str, Any] | None:
    """The config.json a run wrote (path: its workdir or its checkpoints dir), None if absent."""
    for candidate in (os.path.join(path, "config.json"),
                      os.path.join(os.path.dirname(os.path.normpath(path)), "config.json")):
        if os.path.isfile(candidate):
            with open(candidate) as f:
                return json.load(f)
    return None


def abstract_tree(tree: Any, shardings: Any | None = None) -> Any:
    """ShapeDtypeStructs of `tree` (with the given shardings) to restore into."""
    if shardings is None:
        return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _flat(tree: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_str(p): leaf for p, leaf in leaves}


def _params_first(key: str) -> tuple[bool, str]:
    return (not key.startswith("params"), key)


def check_compatible(saved: Any, target: Any, where: str, partial: bool = False) -> None:
    """Raises CheckpointError naming missing/unexpected keys and shape mismatches."""
    saved_flat, target_flat = _flat(saved), _flat(target)
    missing = sorted(set(target_flat) - set(saved_flat), key=_params_first)
    extra = [] if partial else sorted(set(saved_flat) - set(target_flat), key=_params_first)
    shapes = [
        f"{k}: checkpoint {tuple(saved_flat[k].shape)} vs model {tuple(target_flat[k].shape)}"
        for k in sorted(set(saved_flat) & set(target_flat), key=_params_first)
        if tuple(saved_flat[k].shape) != tuple(target_flat[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing in checkpoint: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if extra:
        problems.append(f"not in the model: {extra[:10]}{' ...' if len(extra) > 10 else ''}")
    if shapes:
        problems.append("shape mismatch: " + "; ".join(shapes[:10]))
    if problems:
        raise CheckpointError(f"Checkpoint {where} does not match: " + " | ".join(problems))


def _make_manager(directory: str, options: ocp.CheckpointManagerOptions) -> ocp.CheckpointManager:
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _restore_args(target: Any) -> Any:
    return ocp.checkpoint_utils.construct_restore_args(target)


class Checkpointer:
    """Saves and restores one run's TrainState with an Orbax CheckpointManager."""

    def __init__(self, workdir: str, *, every: int, keep: int = 2, async_save: bool = True):
        if int(keep) < 1:
            raise ConfigError(f"config.checkpoint.keep={keep}: keep at least 1 checkpoint (the newest is what a "
                              "run resumes from; Orbax would keep none).")
        self.every = int(every)
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
        check_path(self.directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
            # A write killed half-way leaves a tmp dir; it is never restored from, and is removed here.
            cleanup_tmp_directories=True,
        )
        self._manager = _make_manager(self.directory, options)
        self._preempted = False

    # -- queries
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    # -- saving
    def should_save(self, step: int, last_step: int) -> bool:
        return step == last_step or (self.every > 0 and step % self.every == 0)

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> bool:
        """Saves at `step` unless that step is already saved; returns True if saved."""
        if step in self.all_steps():
            return False
        return self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def check_readable(self, step: int) -> None:
        """Waits for the save of `step`, then reads its metadata back; CheckpointError if it cannot be.

        Cheap (no arrays are read): run after a run's first save, so a run whose
        checkpoints can never be restored stops at once instead of at the end.
        """
        self.wait()
        try:
            _saved_state_metadata(self._manager, step, self.directory)
        except CheckpointError as err:
            raise CheckpointError(f"The checkpoint just saved ({self.directory}/{step}) does not read back, so this "
                                  f"run could never be resumed; stopping. Cause: {short_reason(err, 300)}") from err

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    # -- preemption
    def install_sigterm_handler(self) -> None:
        """SIGTERM (TPU maintenance, SLURM) -> `preempted` becomes True; the loop saves and exits."""

        def handler(signum, frame):
            del signum, frame
            self._preempted = True

        signal.signal(signal.SIGTERM, handler)

    @property
    def preempted(self) -> bool:
        return self._preempted

    # -- restoring
    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores (state, meta) at `step` (default latest) onto `target`'s shardings.

        Args:
          target: pytree of jax.ShapeDtypeStruct with `.sharding` (see abstract_tree).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"No checkpoint in {self.directory}.")
        return _restore_state_and_meta(self._manager, step, target, self.directory)

    def restore_newest_readable(self, target: Any, strict: bool = False) -> tuple[Any, dict[str, Any]]:
        """Restores the newest checkpoint that reads back (see `restore`).

        An unreadable newer step is moved aside to `<workdir>/checkpoints_unreadable/<step>`
        (kept, never deleted) with a warning naming it, so this run can save
        that step again. strict=True (or no older step) -> CheckpointError
        naming the directory to move aside. A checkpoint that reads but does not
        match the model is never skipped: that is a config error.
        """
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"No checkpoint in {self.directory}.")
        for i, step in enumerate(steps):
            try:
                restored = self.restore(target, step)
            except UnreadableCheckpointError as err:
                older = steps[i + 1] if i + 1 < len(steps) else None
                if strict or older is None:
                    raise CheckpointError(_unreadable_message(self.directory, step, older, err, strict)) from err
                log.warning("Checkpoint %s/%d cannot be read (%s); trying step %d. Step %d is kept, moved aside.",
                            self.directory, step, short_reason(err), older, step)
                continue
            if i:
                self._move_aside(steps[:i])
            return restored
        raise AssertionError("unreachable")

    def _move_aside(self, steps: list[int]) -> None:
        """Moves unreadable step dirs to UNREADABLE_DIR (process 0), then all processes re-list the steps."""
        if jax.process_index() == 0:
            for step in steps:
                dest = _free_path(os.path.join(os.path.dirname(self.directory), UNREADABLE_DIR, str(step)))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.replace(os.path.join(self.directory, str(step)), dest)
                log.warning("Unreadable checkpoint step %d moved aside to %s (not deleted).", step, dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxsup_checkpoint_move_aside")
        self._manager.reload()


def _free_path(path: str) -> str:
    """`path`, or `path.1`, `path.2`, ... : the first that does not exist (nothing is overwritten)."""
    candidate, n = path, 0
    while os.path.exists(candidate):
        n += 1
        candidate = f"{path}.{n}"
    return candidate


def _unreadable_message(directory: str, step: int, older: int | None, err: BaseException, strict: bool) -> str:
    where = os.path.join(directory, str(step))
    if older is None:
        return f"Checkpoint {where} cannot be read and no older one exists ({short_reason(err)})."
    why = "config.checkpoint.strict=True" if strict else "it cannot be read"
    return (f"Checkpoint {where} cannot be read ({short_reason(err)}); move that directory aside (out of "
            f"{directory}) to resume from step {older}, or set config.checkpoint.strict=False to do so "
            f"automatically ({why}).")


def _saved_state_metadata(manager: ocp.CheckpointManager, step: int, where: str) -> Any:
    try:
        meta = manager.item_metadata(step)
        tree = meta["state"] if "state" in meta else None
    except Exception as err:  # Orbax raises many types for unreadable dirs.
        raise UnreadableCheckpointError(f"Checkpoint {where} step {step} is unreadable or corrupt: {err}") from err
    if tree is None:
        raise UnreadableCheckpointError(f"Checkpoint {where} step {step} has no 'state' item.")
    return getattr(tree, "tree", tree)


def _restore_state_and_meta(manager, step, target, where) -> tuple[Any, dict[str, Any]]:
    saved = _saved_state_metadata(manager, step, f"{where}")
    check_compatible(saved, target, f"{where} (step {step})")
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=target, restore_args=_restore_args(target)),
                meta=ocp.args.JsonRestore(),
            ),
        )
    except Exception as err:
        raise UnreadableCheckpointError(f"Restoring {where} step {step} failed: {err}") from err
    return restored["state"], dict(restored["meta"] or {})


def _nest(subtree_path: str, value: Any) -> Any:
    for key in reversed([k for k in subtree_path.split("/") if k]):
        value = {key: value}
    return value


def _get_subtree(tree: Any, subtree_path: str, where: str) -> Any:
    node = tree
    for key in [k for k in subtree_path.split("/") if k]:
        if not isinstance(node, dict) or key not in node:
            keys = sorted(node) if isinstance(node, dict) else type(node).__name__
            raise CheckpointError(f"Sub-tree {subtree_path!r} not found in {where}: at {key!r}, have {keys}.")
        node = node[key]
    return node


def restore_subtree(
    path: str,
    subtree: str = "params",
    target: Any | None = None,
    step: int | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> Any:
    """Restores one sub-tree (e.g. "params" or "params/img") from another run.

    Args:
      path: another run's workdir, or its checkpoints dir.
      subtree: "/"-separated keys inside the saved state.
      target: optional pytree (arrays or ShapeDtypeStructs with shardings) the
        sub-tree must match; without it, the saved shapes are used and the
        arrays land on `sharding` (default: replicated on the first device).
      step: default latest.
    """
    directory = os.path.abspath(checkpoint_dir(path))
    check_path(directory)
    if not os.path.isdir(directory):
        raise CheckpointError(f"Checkpoint path {path!r} does not exist.")
    manager = _make_manager(directory, ocp.CheckpointManagerOptions(create=False, read_only=True))
    try:
        return _restore_subtree_with(manager, directory, subtree, target, step, sharding)
    finally:
        manager.close()


def _restore_subtree_with(manager, directory: str, subtree: str, target: Any, step: int | None, sharding) -> Any:
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"No checkpoint found under {directory!r}.")
    saved = _get_subtree(_saved_state_metadata(manager, step, directory), subtree, directory)
    if target is None:
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), saved)
    elif not all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(target)):
        target = abstract_tree(target, jax.tree.map(lambda x: x.sharding, target))
    check_compatible(saved, target, f"{directory} sub-tree {subtree!r} (step {step})")
    full_target = _nest(subtree, target)
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=full_target, restore_args=_restore_args(full_target), partial_restore=True
                )
            ),
        )
    except Exception as err:
        raise CheckpointError(f"Restoring sub-tree {subtree!r} from {directory} failed: {err}") from err
    return _get_subtree(restored["state"], subtree, directory)


def check_same_run(meta: dict[str, Any], config: Any, where: str) -> None:
    """Raises if the checkpoint was written with another seed, batch size, dataset or batch guide.

    The data order and every RNG derive from (seed, step) and the batch size,
    so resuming under different ones would silently change the run.
    """
    saved = json.loads(meta.get("config") or "{}")
    saved_data, data = saved.get("data", {}), config.data
    pairs = {
        "seed": (meta.get("seed", saved.get("seed")), config.seed),
        "batch_size": (saved.get("batch_size"), config.batch_size),
        "data.name": (saved_data.get("name"), data.name),
        "data.train_split": (saved_data.get("train_split"), data.train_split),
        "data.batch_guide": (saved_data.get("batch_guide"), data.get("batch_guide", "")),
    }
    changed = [f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in pairs.items() if a is not None and a != b]
    if changed:
        raise CheckpointError(
            f"Checkpoint {where} was written by a different run ({'; '.join(changed)}); resuming would change "
            "the data order. Use a new --workdir, or restore its params with restore_subtree."
        )



def schedule_change(meta: dict[str, Any], config: Any) -> str | None:
    """A note if config.total_steps differs from the checkpoint's (the LR schedule spans total_steps)."""
    saved = json.loads(meta.get("config") or "{}").get("total_steps")
    if saved is None or int(saved) == int(config.total_steps):
        return None
    return (f"total_steps changed from {saved} (checkpoint) to {config.total_steps}: the learning-rate schedule "
            f"(warmup/decay over total_steps) changes from step {meta.get('step', '?')} on.")
