"""Declared value ranges: every bad numeric value is one ConfigError naming key, value and range."""
import glob
import math
import os

import pytest

from jaxsup import config_ranges
from jaxsup.config import check_values, load_config
from jaxsup.errors import ConfigError

from helpers import ROOT, run_cli

CONFIG = os.path.join(ROOT, "configs/supervised_digits.py")

BAD_VALUES = [
    ("batch_size", -8), ("batch_size", 0), ("total_steps", -5), ("optim.lr", math.inf),
    ("optim.lr", math.nan), ("log_every", 0), ("model.widths", (0, 64)), ("optim.warmup_steps", -10),
    ("optim.b2", 1.0), ("checkpoint.keep", 0),
]


@pytest.mark.parametrize("key,value", BAD_VALUES)
def test_bad_value_names_key_value_and_range(key, value):
    config = load_config(CONFIG + ":runlocal", {key: value})
    with pytest.raises(ConfigError) as err:
        check_values(config)
    message = str(err.value)
    shown = f"{key}[0]" if key == "model.widths" else key
    assert f"config.{shown}=" in message and "expected" in message
    assert repr(value[0] if key == "model.widths" else value) in message


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_shipped_config_is_in_range(path):
    check_values(load_config(path))


def test_range_semantics():
    assert config_ranges.POSITIVE_INT.holds(1) and not config_ranges.POSITIVE_INT.holds(0)
    assert not config_ranges.POSITIVE_INT.holds(True)  # a bool is not a count
    assert config_ranges.OPEN_FRACTION.holds(0.0) and not config_ranges.OPEN_FRACTION.holds(1.0)
    assert not config_ranges.POSITIVE.holds(0.0) and config_ranges.POSITIVE.holds(1e-9)
    assert str(config_ranges.OPEN_FRACTION) == "a finite number in [0, 1)"


def test_task_sections_declare_their_ranges():
    config = load_config(os.path.join(ROOT, "configs/kd_digits.py"), {"distill.temperature": 0.0})
    with pytest.raises(ConfigError, match=r"config\.distill\.temperature=0\.0"):
        check_values(config)


def test_cli_refuses_bad_value_and_creates_nothing(tmp_path):
    workdir = tmp_path / "new_run"
    result = run_cli("--config", CONFIG + ":runlocal", "--workdir", str(workdir), "--config.batch_size=-8",
                     "--config.model.widths=(0,64)")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("jaxsup: error:")]
    assert lines == ["jaxsup: error: ConfigError: config.batch_size=-8 (--config.batch_size): "
                     "expected an integer in [1, inf]."]
    assert not workdir.exists()


def test_every_task_has_its_sections_and_every_section_a_task():
    """Registered tasks == declared tasks == task packages; each section owned by one task, read by some."""
    from jaxsup import config as config_lib, registry, tasks
    from jaxsup.tasks.sections import DECLARATIONS

    packages = sorted(d for d in os.listdir(os.path.join(ROOT, "jaxsup", "tasks"))
                      if os.path.isfile(os.path.join(ROOT, "jaxsup", "tasks", d, "task.py")))
    assert sorted(registry.names("task")) == sorted(DECLARATIONS) == sorted(tasks.TASKS) == packages
    owned = [name for d in DECLARATIONS.values() for name in d.sections]
    assert len(owned) == len(set(owned)), "a section is declared by two tasks"
    read = {s for sections in config_lib.TASK_SECTIONS.values() for s in sections}
    assert read == set(owned)
    for task, d in DECLARATIONS.items():
        assert set(d.sections) <= set(d.reads), f"{task} declares a section it does not read"


def test_every_field_has_a_doc():
    from jaxsup import config as config_lib

    docs = config_lib.field_docs()
    assert docs and all(line.strip() for line in docs.values()), [k for k, v in docs.items() if not v.strip()]
    assert all("\n" not in line for line in docs.values())


def test_every_declared_range_names_a_field_some_config_has():
    """The range table cannot drift from the config: each key (model kwargs aside) is a real field."""
    from jaxsup import config as config_lib

    bases = [config_lib.base_config(task) for task in config_lib.TASK_SECTIONS]
    for key in config_lib.value_ranges():
        if key.startswith(("model.", "evals.")):
            continue  # model kwargs and evaluators are per config
        assert any(list(config_ranges.fields_in_range(c, key)) for c in bases), key

