"""Config loading, overrides and locking."""
import os

import pytest

from jaxsup.config import load_config
from jaxsup.errors import ConfigError

from helpers import ROOT, run_cli

CONFIG = os.path.join(ROOT, "configs/supervised_digits.py")


def test_arg_switches_shrink_the_run():
    full, local = load_config(CONFIG), load_config(CONFIG + ":runlocal")
    assert local.total_steps < full.total_steps
    assert load_config(CONFIG + ":vit").model_name == "vit"


def test_overrides_apply_and_keep_types():
    c = load_config(CONFIG, {"optim.lr": 0.5, "batch_size": 64})
    assert c.optim.lr == 0.5 and c.batch_size == 64


def test_misspelt_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="unknown config key 'totl_steps'"):
        load_config(CONFIG, {"totl_steps": 3})


def test_wrong_type_is_an_error():
    with pytest.raises(TypeError):
        load_config(CONFIG, {"batch_size": "big"})


def test_missing_config_file():
    with pytest.raises(ConfigError, match="nope.py"):
        load_config("configs/nope.py")


def test_misspelt_switch_is_an_error_listing_the_known_ones():
    with pytest.raises(ConfigError, match=r"Unknown config switch 'vitt'; known switches: \['runlocal', 'vit'\]"):
        load_config(CONFIG + ":vitt")


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")))
def test_every_config_rejects_an_unknown_switch(name):
    with pytest.raises(ConfigError, match="Unknown config switch 'nope'"):
        load_config(os.path.join(ROOT, "configs", name) + ":nope")


@pytest.mark.parametrize(
    "override, expected",
    [("--config.totl_steps=3", "totl_steps"), ("--config.batch_size=abc", "batch_size"),
     ("--config.model.widht=3", "unknown config key 'model.widht'"),
     ("--config.optim.lr.x=3", "unknown config key 'optim.lr.x'")],
)
def test_cli_rejects_bad_overrides_with_one_message(tmp_path, override, expected):
    result = run_cli("--config", CONFIG, "--workdir", str(tmp_path), override)
    assert result.returncode != 0
    assert expected in result.stderr
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_cli_names_a_missing_config_file_in_one_line_and_creates_nothing(tmp_path):
    workdir = tmp_path / "run"
    result = run_cli("--config", "configs/nope.py", "--workdir", str(workdir))
    assert result.returncode != 0
    assert "jaxsup: error: ConfigError: Config file 'configs/nope.py' does not exist." in result.stderr
    assert "Traceback" not in result.stderr
    assert not workdir.exists()


def test_configs_import_no_jax():
    """Configs import only ml_collections, jaxsup.config and the tasks' light section declarations
    (run in a fresh interpreter): no JAX, no task code."""
    import subprocess
    import sys

    code = ("import sys, glob; from jaxsup.config import load_config\n"
            "LIGHT = ('jaxsup.config', 'jaxsup.errors', 'jaxsup.config_fields', 'jaxsup.config_ranges',"
            " 'jaxsup.tasks', 'jaxsup.tasks.sections')\n"
            "[load_config(f) for f in sorted(glob.glob('configs/*.py'))]\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax', 'tensorflow_datasets')"
            " or m.startswith('jaxsup.') and m not in LIGHT and not m.endswith('.section')"
            " and not (m.startswith('jaxsup.tasks.') and m.count('.') == 2 and m != 'jaxsup.tasks.base'"
            " and m != 'jaxsup.tasks.common'))\n"
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
