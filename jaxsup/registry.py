"""The one string -> object registry: models, tasks, evaluators, datasets, preprocess ops.

Modules register themselves with a decorator; configs name them by string:

    @registry.register("model", "vit")
    class ViT(nn.Module): ...

    registry.get("model", "vit")  # -> ViT

Lookups import the defining package lazily so that a config naming
"model/resnet" only imports what it needs.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from jaxsup.errors import ConfigError

KINDS = ("model", "task", "evaluator", "dataset", "preprocess")

# kind -> the packages whose import registers that kind's entries.
_PACKAGES = {
    "model": ("jaxsup.models",),
    "task": ("jaxsup.tasks",),
    "evaluator": ("jaxsup.evaluators",),
    "dataset": ("jaxsup.data",),
    # Preprocess ops are factories: registry.get("preprocess", "resize")(arg) -> op(example).
    "preprocess": ("jaxsup.data.host.preprocess", "jaxsup.data.host.image_text"),
}

_REGISTRY: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise ConfigError(f"Unknown registry kind {kind!r}; expected one of {KINDS}.")


def register(kind: str, name: str) -> Callable[[Any], Any]:
    """Decorator: registers `obj` under (kind, name). Names must be unique."""
    _check_kind(kind)

    def wrap(obj: Any) -> Any:
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing is not obj:
            raise ConfigError(f"{kind} {name!r} is already registered ({existing}).")
        _REGISTRY[kind][name] = obj
        return obj

    return wrap


def _import_all(kind: str) -> None:
    for package in _PACKAGES[kind]:
        mod = importlib.import_module(package)
        modules = getattr(mod, "REGISTERING_MODULES", None)
        for name in modules if modules is not None else [f"{package}.{sub}" for sub in getattr(mod, "__all__", ())]:
            importlib.import_module(name)


def get(kind: str, name: str) -> Any:
    """Returns the object registered as (kind, name) or raises naming the choices."""
    _check_kind(kind)
    if name not in _REGISTRY[kind]:
        _import_all(kind)
    if name not in _REGISTRY[kind]:
        known = ", ".join(sorted(_REGISTRY[kind])) or "none"
        raise ConfigError(f"Unknown {kind} {name!r}. Registered {kind}s: {known}.")
    return _REGISTRY[kind][name]


def names(kind: str) -> list[str]:
    """All registered names of a kind (imports the kind's package first)."""
    _check_kind(kind)
    _import_all(kind)
    return sorted(_REGISTRY[kind])
