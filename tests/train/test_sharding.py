"""Mesh construction and regex partition rules."""
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from jaxsup import sharding


def test_mesh_fills_minus_one():
    mesh = sharding.make_mesh([("data", -1), ("model", 2)])
    assert dict(mesh.shape) == {"data": 4, "model": 2}


def test_explicit_small_mesh_uses_first_devices():
    mesh = sharding.make_mesh([("data", 1)])
    assert mesh.devices.size == 1 and mesh.devices.flat[0] == jax.devices()[0]


@pytest.mark.parametrize("axes", [[("data", 3)], [("data", -1), ("model", -1)], [("a", 2), ("a", 4)]])
def test_bad_meshes_raise(axes):
    with pytest.raises(ValueError):
        sharding.make_mesh(axes)


def _tree():
    return {
        "params": {"dense": {"kernel": jnp.zeros((16, 6)), "bias": jnp.zeros(6)}, "odd": {"kernel": jnp.zeros((3, 5))}},
        "opt_state": {"mu": {"dense": {"kernel": jnp.zeros((16, 6))}}},
        "step": jnp.zeros((), jnp.int32),
    }


def test_rules_first_match_wins_and_cover_optimizer_state():
    mesh = sharding.make_mesh([("data", 4), ("model", 2)])
    rules = [("dense/kernel", (None, "model")), ("kernel", "fsdp"), (".*", "replicate")]
    specs = sharding.tree_partition_specs(_tree(), rules, mesh)
    assert specs["params"]["dense"]["kernel"] == P(None, "model")
    assert specs["opt_state"]["mu"]["dense"]["kernel"] == P(None, "model")
    assert specs["params"]["dense"]["bias"] == P()
    # fsdp: no dim of (3, 5) divides by 4 -> replicated.
    assert specs["params"]["odd"]["kernel"] == P()
    assert specs["step"] == P()


def test_fsdp_shards_largest_divisible_dim():
    mesh = sharding.make_mesh([("data", 8)])
    specs = sharding.tree_partition_specs({"w": jnp.zeros((8, 64))}, [("w", "fsdp")], mesh)
    assert specs["w"] == P(None, "data")


def test_indivisible_explicit_spec_names_param_shape_and_axis():
    mesh = sharding.make_mesh([("data", 4), ("model", 2)])
    with pytest.raises(ValueError, match=r"odd/kernel.*\(3, 5\).*model"):
        sharding.tree_partition_specs(_tree(), [("odd/kernel", (None, "model"))], mesh)


def test_rule_matching_nothing_warns(caplog):
    mesh = sharding.make_mesh([("data", 8)])
    sharding.tree_partition_specs(_tree(), [("no_such_param", "fsdp")], mesh)
    assert "no_such_param" in caplog.text


def test_batch_divisibility_error_names_the_numbers():
    mesh = sharding.make_mesh([("data", 8)])
    with pytest.raises(ValueError, match="batch_size=12.*8 devices"):
        sharding.check_batch_divisible(12, mesh)
