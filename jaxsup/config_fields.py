"""How a task declares its config: fields with a default, a one-line doc and a valid range.

Each task package has a light `section.py` (no JAX) holding one `Declaration`: the
sections it owns (name -> fields) and the sections it reads (its own and others').
`jaxsup.config` collects them (`jaxsup/tasks/sections.py`) for defaults, docs and the
value ranges checked before a run touches its workdir.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Mapping, Union

import ml_collections

from jaxsup.config_ranges import FRACTION, POSITIVE_INT, Range

CONTRASTIVE_TILE = 512  # column tile of the chunked / ring contrastive losses


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field: its default, what it means (one line), and its valid range (numbers)."""
    default: Any
    doc: str
    valid: Range | None = None


Fields = Mapping[str, Union[Field, "Fields"]]  # a section; a nested mapping is a sub-section


@dataclasses.dataclass(frozen=True)
class Declaration:
    """A task's config: `sections` it owns (name -> fields) and the sections it `reads`."""
    task: str
    reads: tuple[str, ...]
    sections: Mapping[str, Fields] = dataclasses.field(default_factory=dict)


def defaults(fields: Fields) -> dict[str, Any]:
    """{name: default} of a section, sub-sections as nested dicts; defaults are fresh copies."""
    return {name: defaults(f) if isinstance(f, Mapping) else copy.deepcopy(f.default)
            for name, f in fields.items()}


def ranges(prefix: str, fields: Fields) -> dict[str, Range]:
    """{"section.field": range} for every field of a section that declares one."""
    out: dict[str, Range] = {}
    for name, f in fields.items():
        if isinstance(f, Mapping):
            out.update(ranges(f"{prefix}.{name}", f))
        elif f.valid is not None:  # a sequence's range holds for each entry
            out[f"{prefix}.{name}" + ("[]" if isinstance(f.default, (tuple, list)) else "")] = f.valid
    return out


def docs(prefix: str, fields: Fields) -> dict[str, str]:
    """{"section.field": one-line doc} of a section."""
    out: dict[str, str] = {}
    for name, f in fields.items():
        out.update(docs(f"{prefix}.{name}", f) if isinstance(f, Mapping) else {f"{prefix}.{name}": f.doc})
    return out


def teacher_spec(path: str = "", **fields: Any) -> ml_collections.ConfigDict:
    """A frozen model restored from another run (e.g. config.distill.teacher).

    path            that run's workdir, or its `checkpoints` dir
    params_subtree  where its params live ("params"; "params/student" for a distill run)
    state_subtree   where its other collections (BatchNorm stats) live ("task_state";
                    "task_state/student" for a distill run); collection c is read from
                    f"{state_subtree}/{c}"
    step            -1: the latest
    model_name, model  registry name + kwargs; "" reads both from the run's config.json
    partition_rules ((regex, tactic), ...) for its own sharding; () -> config.partition_rules
    """
    spec = ml_collections.ConfigDict(dict(path=path, params_subtree="params", state_subtree="task_state", step=-1,
                                          model_name="", model=ml_collections.ConfigDict(), partition_rules=()))
    spec.update(fields)
    return spec


def teacher_field(doc: str) -> Field:
    """A `teacher_spec()` sub-config field."""
    return Field(teacher_spec(), doc)


def augment_fields(augment: str = "none", crop_scale: tuple[float, float] = (0.5, 1.0)) -> dict[str, Field]:
    """Device augmentation of the train images (jaxsup.data.device.augment)."""
    return dict(augment=Field(augment, 'device augmentation of train images: "none" | "crop" | "simclr"'),
                crop_scale=Field(crop_scale, "(min, max) area fraction of the random crop", FRACTION))


def contrastive_fields(impl: str = "reference") -> dict[str, Field]:
    """Which contrastive loss implementation runs (pallas_kernels.contrastive)."""
    return dict(
        impl=Field(impl, 'loss implementation: "reference" | "chunked" | "pallas" | "ring"'),
        tile=Field(CONTRASTIVE_TILE, "column tile of the chunked / ring losses", POSITIVE_INT),
        fallback=Field(True, 'where impl="pallas" cannot run: warn and use "chunked" (False: an error)'),
        axis=Field("data", 'the mesh axis a ring (impl="ring") runs over'),
    )
