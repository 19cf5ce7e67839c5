"""Config loading, overrides and locking."""
import os

import pytest

from jaxsup.config import load_config

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
    with pytest.raises(AttributeError, match="totl_steps"):
        load_config(CONFIG, {"totl_steps": 3})


def test_wrong_type_is_an_error():
    with pytest.raises(TypeError):
        load_config(CONFIG, {"batch_size": "big"})


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_config("configs/nope.py")


@pytest.mark.parametrize(
    "override, expected",
    [("--config.totl_steps=3", "totl_steps"), ("--config.batch_size=abc", "batch_size"),
     ("--config.model.widht=3", "unknown config key 'model.widht'")],
)
def test_cli_rejects_bad_overrides_with_one_message(tmp_path, override, expected):
    result = run_cli("--config", CONFIG, "--workdir", str(tmp_path), override)
    assert result.returncode != 0
    assert expected in result.stderr
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))
