"""Tests for uvimx.sharding on 8 CPU devices (see conftest.py)."""
import jax
import numpy as np
import pytest

from uvimx import sharding

P = jax.sharding.PartitionSpec


def test_eight_devices():
  assert jax.device_count() == 8


@pytest.mark.parametrize("mesh_config, shape", [
    ([("data", -1)], {"data": 8}),
    ([("data", 2), ("fsdp", -1)], {"data": 2, "fsdp": 4}),
    ([("data", 2), ("fsdp", 4)], {"data": 2, "fsdp": 4}),
])
def test_make_mesh(mesh_config, shape):
  assert dict(sharding.make_mesh(mesh_config).shape) == shape


@pytest.mark.parametrize("mesh_config, match", [
    ([("data", 3), ("fsdp", -1)], "does not divide"),
    ([("data", 2), ("fsdp", 2)], "needs 4 devices"),
    ([("data", -1), ("fsdp", -1)], "at most one"),
])
def test_make_mesh_errors(mesh_config, match):
  with pytest.raises(ValueError, match=match):
    sharding.make_mesh(mesh_config)


def test_put_batch_and_to_host_round_trip():
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 4)])
  batch = {"image": np.arange(16 * 3, dtype=np.float32).reshape(16, 3),
           "label": np.arange(16, dtype=np.int32)}
  placed = sharding.put_batch(batch, mesh)
  # Every device holds 2 of the 16 examples.
  assert placed["image"].shape == (16, 3)
  assert {s.data.shape for s in placed["image"].addressable_shards} == {(2, 3)}
  back = sharding.to_host(placed)
  for key, value in batch.items():
    np.testing.assert_array_equal(back[key], value)


def test_fsdp_rules_shard_large_leaves_on_largest_divisible_dim():
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 4)])
  tree = {"params": {"kernel": jax.ShapeDtypeStruct((6, 64), np.float32),
                     "odd": jax.ShapeDtypeStruct((30, 33), np.float32),
                     "bias": jax.ShapeDtypeStruct((64,), np.float32),
                     "head": jax.ShapeDtypeStruct((8, 64), np.float32)},
          "rng": jax.ShapeDtypeStruct((2,), np.uint32)}
  rules = [("params/head", (None, "data")), ("params/.*", "fsdp")]
  specs = jax.tree.map(lambda s: s.spec, sharding.infer_shardings(
      tree, mesh, rules, fsdp_min_size=100))
  assert specs["params"]["kernel"] == P(None, "fsdp")  # 64 % 4 == 0.
  assert specs["params"]["odd"] == P()  # no dimension divisible by 4.
  assert specs["params"]["bias"] == P()  # 64 elements < fsdp_min_size.
  assert specs["params"]["head"] == P(None, "data")  # explicit rule first.
  assert specs["rng"] == P()  # no rule: replicated.


def test_fsdp_rule_needs_an_fsdp_axis():
  mesh = sharding.make_mesh([("data", -1)])
  tree = {"w": jax.ShapeDtypeStruct((8, 8), np.float32)}
  with pytest.raises(ValueError, match="no 'fsdp' axis"):
    sharding.infer_shardings(tree, mesh, [(".*", "fsdp")])


@pytest.mark.parametrize("launch, connects", [
    ({}, False),
    # Inside a SLURM allocation, python run directly: one process.
    ({"SLURM_JOB_ID": "7"}, False),
    # srun: JAX reads the processes from the step's variables.
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]",
      "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, True),
    ({"JAX_COORDINATOR_ADDRESS": "host:1234"}, True),
])
def test_distributed_is_initialized_for_multi_process_launches(
    monkeypatch, launch, connects):
  for name in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
               "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "OMPI_MCA_orte_hnp_uri"):
    monkeypatch.delenv(name, raising=False)
  for name, value in launch.items():
    monkeypatch.setenv(name, value)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda: calls.append(True))
  sharding.maybe_initialize_distributed()
  assert calls == ([True] if connects else [])
