"""User errors: bad input that the command line prints as one line.

A `JaxsupError` says what the user gave wrong (a config key or value, a
dataset, a checkpoint, a workdir) and how to fix it; `jaxsup.cli` prints it
as `jaxsup: error: <Kind>: <message>` without a traceback. Every other
exception is a bug and keeps its traceback. The classes also derive from the
built-in type that fits (ValueError, FloatingPointError, ...), so code that
catches those keeps working.

This module imports nothing from jaxsup (configs may import it).
"""
from __future__ import annotations


class JaxsupError(Exception):
    """Base of every error caused by the user's input rather than a bug."""


class ConfigError(JaxsupError, ValueError):
    """A config key, value, switch or combination is invalid."""


class DataError(JaxsupError, ValueError):
    """A dataset, split, file of labels or batch layout is missing or does not fit."""


class CheckpointError(JaxsupError, ValueError):
    """A checkpoint is missing, corrupt, or does not match what restores it."""


class WorkdirError(JaxsupError, OSError):
    """The workdir cannot be used (not a directory, not writable, in use)."""


class NonFiniteError(JaxsupError, FloatingPointError):
    """Training produced a non-finite loss, gradient or update (nan_policy='stop')."""


class LaunchError(JaxsupError, RuntimeError):
    """Multi-process start-up failed (coordinator unreachable, bad process flags)."""
