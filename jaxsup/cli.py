"""What the command-line entry points share: flags, logging, one-line user errors.

    define_config_flags()  --config (configs/*.py[:arg], with --config.key=value) and --workdir
    run(main)              app.run(main); a JaxsupError is printed as one line, anything
                           else keeps its traceback (JAXSUP_TRACEBACK=1 shows it for both)

Each entry point (jaxsup.train, jaxsup.w2s) defines its flags when run as a
program, so importing one never defines another's flags.
"""
from __future__ import annotations

import errno
import logging
import os
import sys
from typing import Callable, Sequence

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxsup import config as config_lib
from jaxsup.errors import ConfigError, JaxsupError

log = logging.getLogger("jaxsup")
FLAGS = flags.FLAGS


def define_config_flags(workdir_help: str) -> None:
    """--config (locked, with --config.key=value overrides) and --workdir."""
    config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True)
    flags.DEFINE_string("workdir", None, workdir_help)


def setup_logging() -> None:
    """jaxsup's own messages at INFO; the libraries' (Orbax, absl) at WARNING."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s jaxsup %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def config_args(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """(the --config value, the keys of --config.key=value overrides) from a command line."""
    spec, keys = None, []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
        elif arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg.startswith("--config."):
            keys.append(arg[len("--config."):].split("=", 1)[0])
    return spec, keys


def check_config_args(argv: Sequence[str]) -> None:
    """Loads --config and checks every override key exists, before absl parses the values.

    Raises ConfigError naming a missing file, a bad switch or an unknown key
    (e.g. 'model.widht'); value types are checked by ml_collections' flag parser.
    """
    spec, keys = config_args(argv)
    if spec is None:
        return
    config = config_lib.load_config(spec)
    for key in keys:
        if not config_lib.has_key(config, key):
            raise ConfigError(f"unknown config key {key!r} (--config.{key}): {config_lib.closest_keys(config, key)}")


# The machine's fault, not the program's: a full disk, a read-only or forbidden path.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def storage_error(err: BaseException) -> OSError | None:
    """The OSError of STORAGE_ERRNOS behind `err` (itself, or in its cause / context chain), else None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            return err
        err = err.__cause__ or err.__context__
    return None


def storage_message(err: OSError) -> str:
    """One line naming the path, what failed, and what was kept."""
    where = f"{err.filename}: " if err.filename else ""
    return (f"jaxsup: error: {where}{err.strerror or os.strerror(err.errno)} (nothing half-written was kept: "
            "checkpoints and files are written to a temporary name and renamed; earlier ones are intact)")


def run(main: Callable[[list[str]], None], argv: Sequence[str] | None = None) -> None:
    """app.run(main), printing a user error (bad config, data, checkpoint, workdir) or a storage
    error (disk full, read-only, permission) as one line."""
    argv = list(sys.argv if argv is None else argv)
    try:
        check_config_args(argv[1:])
        app.run(main, argv=argv)
    except JaxsupError as err:
        if os.environ.get("JAXSUP_TRACEBACK"):
            raise
        message = " ".join(str(err).split())
        raise SystemExit(f"jaxsup: error: {type(err).__name__}: {message}\n(set JAXSUP_TRACEBACK=1 for the traceback)")
    except Exception as err:
        cause = storage_error(err)
        if cause is None or os.environ.get("JAXSUP_TRACEBACK"):
            raise
        raise SystemExit(storage_message(cause) + "\n(set JAXSUP_TRACEBACK=1 for the traceback)") from None
