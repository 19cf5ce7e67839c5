"""The import graph runs one way: train -> experiment assembly -> tasks -> {models, losses,
data} -> kernels (docs/design.md). Read from the source with ast, function-level imports included."""
from __future__ import annotations

import ast
import os

import pytest

from helpers import ROOT

# Layer of each module group: a module may import only lower layers, or its own group.
LAYERS = {
    "pallas_kernels": 0,
    "jaxsup.__init__": 0,  # the empty package module
    "jaxsup.errors": 1,
    "jaxsup.registry": 2, "jaxsup.config_ranges": 2, "jaxsup.sharding_rules": 2,
    "jaxsup.config_fields": 2.2,
    "jaxsup.task_sections": 2.5,  # the task packages' section.py, collected by jaxsup.tasks.sections (no JAX)
    "jaxsup.config": 2.7,
    "jaxsup.sharding": 3, "jaxsup.microbatch": 3, "jaxsup.distributed": 3, "jaxsup.metrics": 3, "jaxsup.workdir": 3,
    "jaxsup.plot": 3,  # reads metrics.jsonl only; the run (train) and its CLI both use it
    "jaxsup.optim": 4, "jaxsup.checkpoint": 4,
    "jaxsup.interop": 4,  # weight formats only (imports errors): data.reinforce loads public teachers through it
    "jaxsup.models": 5, "jaxsup.losses": 5, "jaxsup.data": 5,
    "jaxsup.tasks": 6, "jaxsup.evaluators": 6,
    "jaxsup.step": 7,
    "jaxsup.experiment": 8, "jaxsup.cli": 8,
    "jaxsup.train": 9, "jaxsup.eval": 9, "jaxsup.export": 9,
    "jaxsup.w2s": 10,
}
# Inside jaxsup.data, rooms by role: a room imports only lower rooms (same layer: not each other).
DATA_ROOMS = {
    "jaxsup.data.text": 0, "jaxsup.data.device": 0, "jaxsup.data.labels": 0, "jaxsup.data.datasets": 0,
    "jaxsup.data.host": 1, "jaxsup.data.convert": 1,
    "jaxsup.data.loader": 2,
    "jaxsup.data.reinforce": 3,  # runs a teacher over the loader's batches
}
# Inside jaxsup.tasks a task imports only these shared modules, never another task.
TASK_SHARED = ("jaxsup.tasks.base", "jaxsup.tasks.common")


def task_of(module: str) -> str | None:
    """The task package of a module (jaxsup.tasks.clip.task -> jaxsup.tasks.clip), else None."""
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[:2] == ["jaxsup", "tasks"] and len(parts) >= 4 else None


def module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def is_task_section(module: str) -> bool:
    """jaxsup.tasks (its __init__), jaxsup.tasks.sections and each jaxsup.tasks.<task>.section."""
    parts = module.split(".")
    return module in ("jaxsup.tasks", "jaxsup.tasks.sections") or (
        parts[:2] == ["jaxsup", "tasks"] and len(parts) == 4 and parts[3] == "section")


def group_of(module: str) -> str:
    if module == "jaxsup":
        return "jaxsup.__init__"
    if is_task_section(module):
        return "jaxsup.task_sections"
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")


def room_of(module: str) -> str:
    """The jaxsup.data room of a data module (the package module itself is room-less)."""
    for room in DATA_ROOMS:
        if module == room or module.startswith(room + "."):
            return room
    if module == "jaxsup.data":
        return module
    raise AssertionError(f"{module} is in no room of jaxsup.data: add it to DATA_ROOMS in {__file__}")


def room_violation(src: str, dst: str) -> str | None:
    """Why the import src -> dst (both in jaxsup.data) breaks the room order, or None."""
    r_src, r_dst = room_of(src), room_of(dst)
    if r_src == r_dst or "jaxsup.data" in (r_src, r_dst):
        return None
    if DATA_ROOMS[r_dst] >= DATA_ROOMS[r_src]:
        return f"{r_src} (room layer {DATA_ROOMS[r_src]}) imports {r_dst} (room layer {DATA_ROOMS[r_dst]})"
    return None


def imports_of(path: str, module: str, modules: set[str]) -> set[str]:
    """Every jaxsup / pallas_kernels module imported anywhere in the file.

    `from a.b import c` counts as an import of a.b.c if that is a module, else of a.b.
    """
    tree = ast.parse(open(path).read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import
                base = ".".join(module.split(".")[: -node.level] + [node.module])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m.split(".")[0] in ("jaxsup", "pallas_kernels")}


def source_modules() -> dict[str, str]:
    out = {}
    for package in ("jaxsup", "pallas_kernels"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    out[module_name(path)] = path
    return out


MODULES = source_modules()


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (names that are attributes map to their module)."""
    graph = {}
    for module, path in MODULES.items():
        graph[module] = imports_of(path, module, set(MODULES)) & set(MODULES)
        graph[module].discard(module)
    return graph


def violation(src: str, dst: str) -> str | None:
    """Why the import src -> dst breaks the layering, or None if it is allowed."""
    g_src, g_dst = group_of(src), group_of(dst)
    if src.startswith("pallas_kernels") and dst.startswith("jaxsup"):
        return "pallas_kernels never imports jaxsup"
    if g_src == g_dst:
        is_task = g_src == "jaxsup.tasks" and src not in TASK_SHARED
        if is_task and dst not in (*TASK_SHARED, "jaxsup.tasks") and task_of(dst) != task_of(src):
            return "a task imports another task (shared helpers live in jaxsup.tasks.common)"
        return room_violation(src, dst) if g_src == "jaxsup.data" else None
    if LAYERS[g_dst] >= LAYERS[g_src]:
        return f"{g_src} (layer {LAYERS[g_src]}) imports {g_dst} (layer {LAYERS[g_dst]})"
    return None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A module-level import cycle, or None."""
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, [*stack, nxt])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_every_import_goes_down_the_layers():
    graph = import_graph()
    bad = sorted(f"{s} -> {d}: {why}" for s in graph for d in graph[s] if (why := violation(s, d)))
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_no_package_cycles():
    """Collapsed to groups (jaxsup.tasks, jaxsup.evaluators, ...), the graph has no cycle either."""
    packages: dict[str, set[str]] = {}
    for src, dsts in import_graph().items():
        packages.setdefault(group_of(src), set()).update(group_of(d) for d in dsts if group_of(d) != group_of(src))
    for dsts in list(packages.values()):
        for d in dsts:
            packages.setdefault(d, set())
    assert find_cycle(packages) is None


@pytest.mark.parametrize("src,dst", [
    ("jaxsup.evaluators.classification", "jaxsup.tasks.supervised.task"),  # evaluator -> task
    ("jaxsup.losses.gradcache", "jaxsup.step"),  # upward
    ("jaxsup.tasks.simclr.task", "jaxsup.tasks.clip.task"),  # task -> task
    ("jaxsup.tasks.clip.section", "jaxsup.tasks.common"),  # a section imports task code (JAX)
    ("jaxsup.config", "jaxsup.tasks.clip.task"),  # configs would import JAX
    ("pallas_kernels.contrastive.reference", "jaxsup.losses.contrastive"),
    ("jaxsup.models.vit", "jaxsup.data.device.augment"),  # peers
    ("jaxsup.data.host.image_ops", "jaxsup.data.loader.pipeline"),  # data room upward
    ("jaxsup.data.device.augment", "jaxsup.data.host.image_ops"),  # data rooms, same layer
])
def test_the_checker_catches_a_wrong_edge(src, dst):
    assert violation(src, dst)


def test_every_data_module_is_in_a_room():
    for module in MODULES:
        if module.startswith("jaxsup.data"):
            room_of(module)


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
