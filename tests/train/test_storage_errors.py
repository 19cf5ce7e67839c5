"""A full disk, a read-only or forbidden path anywhere under an entry point is one line naming the path."""
import errno

import pytest

from jaxsup import cli


def _raise(err: BaseException):
    def main(argv):
        raise err
    return main


def _wrapped(os_error: OSError) -> Exception:
    """An OSError deep in a library, re-raised as another type (as Orbax's async save does)."""
    try:
        try:
            raise os_error
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize("code,text", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system"),
                                       (errno.EACCES, "Permission denied")])
def test_storage_errors_end_in_one_line_naming_the_path(code, text, monkeypatch):
    monkeypatch.delenv("JAXSUP_TRACEBACK", raising=False)
    err = _wrapped(OSError(code, text, "/runs/x/checkpoints/5/state"))
    with pytest.raises(SystemExit) as exit_info:
        cli.run(_raise(err), ["jaxsup"])
    first, hint = str(exit_info.value).splitlines()
    assert first.startswith(f"jaxsup: error: /runs/x/checkpoints/5/state: {text} (nothing half-written")
    assert hint == "(set JAXSUP_TRACEBACK=1 for the traceback)"


def test_other_errors_keep_their_traceback(monkeypatch):
    monkeypatch.delenv("JAXSUP_TRACEBACK", raising=False)
    with pytest.raises(FileNotFoundError):  # a bug or a missing input, not the machine: the traceback stays
        cli.run(_raise(FileNotFoundError(errno.ENOENT, "No such file", "/x")), ["jaxsup"])
    with pytest.raises(ValueError):
        cli.run(_raise(ValueError("a bug")), ["jaxsup"])


def test_jaxsup_traceback_shows_the_storage_error(monkeypatch):
    monkeypatch.setenv("JAXSUP_TRACEBACK", "1")
    with pytest.raises(RuntimeError):
        cli.run(_raise(_wrapped(OSError(errno.ENOSPC, "No space left on device", "/x"))), ["jaxsup"])
