"""The workdir: checked before anything is written, locked while a run uses it.

    path = prepare(workdir)            # absolute, created, writable; else WorkdirError (one line)
    lock = WorkdirLock(path); lock.acquire()   # process 0 only; a second run stops at once
    write_config(config_json, path)    # only once the run really starts or resumes
    drop_replayed_metrics(path, step, evals_rerun)  # on resume: metrics.jsonl keeps one record per step
    lock.release()

The lock is `<workdir>/lock`: an exclusive `flock` held for the life of the
run, and a record (PID, host, start time) of who holds it. The kernel drops
the flock when its process dies, so a lock left by a killed run is taken over
(with a warning naming the old holder). Nothing here deletes a file; files
are replaced only atomically (a temporary file and a rename).
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile

from jaxsup.errors import WorkdirError

log = logging.getLogger("jaxsup")

LOCK_FILE = "lock"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"  # written by jaxsup.metrics.MetricWriter
# Orbax finds checkpoint files with glob patterns ('[', ']', '*', '?') and
# TensorStore reads '%' as a URL escape: a run under such a path saves and never restores.
UNSAFE_CHARS = "[]*?%"


def check_path_chars(path: str) -> None:
    """Raises WorkdirError if `path` holds a character Orbax/TensorStore cannot read back."""
    bad = sorted({c for c in path if c in UNSAFE_CHARS})
    if bad:
        raise WorkdirError(f"Workdir {path!r} contains {', '.join(repr(c) for c in bad)}: checkpoints under it "
                           "would save but never restore (Orbax reads paths as glob patterns); choose a name without "
                           f"any of {UNSAFE_CHARS!r}.")


def prepare(workdir: str) -> str:
    """The absolute workdir, created if missing; WorkdirError if it is a file, unsafe or not writable."""
    path = os.path.abspath(workdir)
    check_path_chars(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(f"--workdir {path!r} is a file, not a directory; give a directory (it is created if missing).")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # os.access says yes to root on read-only mounts: really write.
            pass
    except OSError as err:
        raise WorkdirError(f"Workdir {path!r} cannot be written ({err.strerror or err}); "
                           "choose a writable directory.") from err
    return path


def holds_a_record(workdir: str) -> bool:
    """Whether a run left anything worth keeping here: metrics lines or a checkpoint."""
    metrics = os.path.join(workdir, "metrics.jsonl")
    checkpoints = os.path.join(workdir, "checkpoints")
    return (os.path.exists(metrics) and os.path.getsize(metrics) > 0) or (
        os.path.isdir(checkpoints) and bool(os.listdir(checkpoints)))


def remove_if_unused(workdir: str) -> None:
    """Removes a workdir this run created when the run was refused before it recorded anything
    (its lock, an empty tb/ folder, config.json): a refused run leaves no trace."""
    if not holds_a_record(workdir):
        shutil.rmtree(workdir, ignore_errors=True)


def write_config(config_json: str, workdir: str) -> None:
    """Writes `<workdir>/config.json` atomically (a kill never leaves half a file)."""
    write_atomic(os.path.join(workdir, CONFIG_FILE), config_json)


def write_atomic(path: str, text: str) -> None:
    """Replaces `path` by `text` via a temporary file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.")
    try:
        os.fchmod(fd, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)  # mkstemp makes 0600
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)  # our own temporary file, never the target
        raise


def _rewritten_by_resume(record: dict, step: int, evals_rerun: bool) -> bool:
    """Whether a resume from `step` writes this record again (so the old one must go)."""
    if record["step"] > step:
        return True  # trained (or evaluated) after the checkpoint: replayed by the resumed run
    if record["step"] < step:
        return False
    keys = [k for k in record if k != "step"]
    if "perf/compile_s" in record:
        return True  # the start-up record of an attempt that saved nothing after `step`
    return evals_rerun and not any(k.startswith(("train/", "perf/")) for k in keys)


def drop_replayed_metrics(workdir: str, step: int, evals_rerun: bool) -> int:
    """Before a run resumes from `step`: drops the metrics.jsonl records it will write again.

    Those are the records after `step`, the start-up record at `step` and, if
    `evals_rerun` (nothing left to train: the run only evaluates), the eval
    records at `step`; also a line cut short by a kill. The file is rewritten
    atomically. Returns the number of records dropped.
    """
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # half a line: the previous run was killed while writing it
        if not (isinstance(record, dict) and isinstance(record.get("step"), int)) or not _rewritten_by_resume(
                record, step, evals_rerun):
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        write_atomic(path, "".join(line + "\n" for line in kept))
        log.info("%s: dropped %d records after step %d (the resumed run writes them again).", path, dropped, step)
    return dropped


def _holder_text(record: dict) -> str:
    return f"PID {record.get('pid', '?')} on {record.get('host', '?')} since {record.get('since', '?')}"


def _read_record(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").strip()
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"pid": text[:40]}


def _pid_alive(pid: object) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, TypeError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """An exclusive lock on a workdir for the life of a run (see the module docstring).

    `what` / `option` name the folder in messages (the converter locks its output
    folder: "Output folder", "--out")."""

    def __init__(self, workdir: str, what: str = "Workdir", option: str = "--workdir"):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self.what, self.option = what, option
        self._fd: int | None = None

    def _in_use(self, record: dict) -> WorkdirError:
        return WorkdirError(f"{self.what} {self.workdir} is in use by {_holder_text(record)}; wait for that run to "
                            f"end (or stop it), or use another {self.option}.")

    def acquire(self) -> None:
        """Takes the lock; WorkdirError naming the holder if another live run has it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            previous = self._lock(fd)
        except BaseException:
            os.close(fd)
            raise
        if previous and str(previous.get("pid")) != str(os.getpid()):
            log.warning("%s %s: taking over the lock left by a run that is gone (%s).",
                        self.what, self.workdir, _holder_text(previous))
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _lock(self, fd: int) -> dict:
        """flock(fd) without waiting; returns the previous holder's record (empty if none)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._in_use(_read_record(fd)) from None
        except OSError as err:  # e.g. ENOLCK: a filesystem without locks; fall back to the record.
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            record = _read_record(fd)
            if record and record.get("host") == socket.gethostname() and _pid_alive(record.get("pid")):
                raise self._in_use(record) from None
            log.warning("Workdir %s: file locks are not supported here (%s); relying on the PID record.",
                        self.workdir, err.strerror)
            return record
        return _read_record(fd)

    def release(self) -> None:
        """Empties the record and drops the lock (the file stays: removing it would race a waiting run)."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError:
            pass  # a filesystem without locks (see _lock): the emptied record is the release
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
