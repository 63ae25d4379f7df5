"""Meshes, partition rules and global batches: jit + NamedSharding, no pmap.

The batch axis of every input is split over *all* devices of the mesh, so with
`config.mesh = [("data", 2), ("fsdp", 4)]` each of the 8 devices sees 1/8 of
the global batch; the "fsdp" axis additionally splits large parameters (and
their optimizer state), which XLA all-gathers when a layer needs them. Under
`jax.jit` with these shardings every reduction over the batch (loss means, VQ
counts) is global: no explicit collectives are written anywhere.

Partition rules (`config.sharding_rules`) are `(regex, strategy)` pairs
matched, first match wins, against the "/"-joined path of each leaf of the
train state (e.g. "params/encoder/encoderblock_0/MlpBlock_0/Dense_0/kernel",
"opt/0/mu/encoder/..."), strategy one of:
  "replicate": a full copy on every device;
  "fsdp": split the largest dimension divisible by the "fsdp" axis size, for
    leaves of at least `fsdp_min_size` elements (smaller ones are replicated:
    sharding them costs more in communication than it saves);
  a tuple, e.g. (None, "fsdp"): an explicit PartitionSpec.
"""
import os
import re

from absl import logging
import jax
import numpy as np

from uvimx import utils

P = jax.sharding.PartitionSpec
NamedSharding = jax.sharding.NamedSharding


def maybe_initialize_distributed():
  """Connects the processes of a multi-host job, if the environment says so.

  Cloud TPU VMs, SLURM job steps (`srun`) and Open MPI launches are
  configured by JAX itself, from the variables it reads; a generic launch
  sets JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID).
  Single-process runs skip this, also inside a SLURM allocation without
  `srun` (SLURM_JOB_ID alone: JAX would find no processes to connect).
  """
  markers = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
             "SLURM_STEP_NODELIST", "OMPI_MCA_orte_hnp_uri")
  if any(m in os.environ for m in markers):
    jax.distributed.initialize()
    logging.info("Process %d of %d.", jax.process_index(),
                 jax.process_count())


def make_mesh(mesh_config, devices=None):
  """A Mesh from [(axis_name, size), ...]; one size may be -1 (the rest).

  Args:
    mesh_config: e.g. [("data", -1)] or [("data", 2), ("fsdp", 4)].
    devices: the devices to use (default: all of `jax.devices()`).

  Returns:
    The mesh.
  """
  devices = jax.devices() if devices is None else devices
  names = [name for name, _ in mesh_config]
  sizes = [size for _, size in mesh_config]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh {mesh_config}: at most one size may be -1.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"config.mesh {mesh_config} does not divide the "
                       f"{len(devices)} devices.")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"config.mesh {mesh_config} needs {np.prod(sizes)} "
                     f"devices, but there are {len(devices)}.")
  # Auto axes: jit propagates shardings from the in/out specs (GSPMD), rather
  # than making every array's sharding part of its type (Explicit, the
  # default of jax.make_mesh).
  return jax.make_mesh(sizes, names, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def check_batch_size(batch_size, mesh, what):
  """Raises unless `batch_size` (named `what`) splits evenly over the mesh."""
  if batch_size % mesh.size:
    raise ValueError(f"{what}={batch_size} is not divisible by the "
                     f"{mesh.size} devices of the mesh: every batch is split "
                     f"evenly over them. Give a multiple of {mesh.size}.")


def batch_sharding(mesh):
  """Leading (batch) axis split over all mesh axes."""
  return NamedSharding(mesh, P(mesh.axis_names))


def replicated(mesh):
  return NamedSharding(mesh, P())


def put_batch(batch, mesh):
  """Host-local numpy batch -> global jax.Arrays split along the batch axis.

  Each process passes only its own examples (input_pipeline shards the data
  per process); the global batch is their concatenation in process order.

  Args:
    batch: a pytree of arrays whose leading axis is the host-local batch.
    mesh: the mesh.

  Returns:
    The same pytree of global jax.Arrays.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def to_host(tree):
  """This process's rows of globally batch-sharded arrays, as numpy.

  The inverse of `put_batch` for outputs that keep the batch axis: each
  process gets back the rows of its own examples, in order.

  Args:
    tree: a pytree of jax.Arrays sharded by `batch_sharding`.

  Returns:
    The same pytree of host-local numpy arrays.
  """
  def local(x):
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    rows, seen = [], set()
    for s in shards:  # Shards replicated over other axes appear repeatedly.
      if s.index[0].start not in seen:
        seen.add(s.index[0].start)
        rows.append(np.asarray(s.data))
    return np.concatenate(rows)
  return jax.tree.map(local, tree)


def _fsdp_spec(shape, axis_size, min_size):
  """Splits the largest dimension divisible by the fsdp axis size."""
  if np.prod(shape, dtype=np.int64) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % axis_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def infer_shardings(tree, mesh, rules, fsdp_min_size=2**14):
  """NamedShardings for a pytree of arrays (or ShapeDtypeStructs).

  Args:
    tree: e.g. the train state {"params": ..., "opt": ..., ...}.
    mesh: the mesh.
    rules: [(regex, strategy)], see the module docstring; leaves no rule
      matches are replicated.
    fsdp_min_size: leaves with fewer elements are never split.

  Returns:
    A pytree of NamedSharding with the structure of `tree`.
  """
  compiled = [(re.compile(regex), strategy) for regex, strategy in rules]
  if any(s == "fsdp" for _, s in rules) and "fsdp" not in mesh.axis_names:
    raise ValueError(f"A sharding rule asks for 'fsdp' but config.mesh has "
                     f"no 'fsdp' axis (axes: {mesh.axis_names}).")

  def spec_for(path, leaf):
    name = utils.path_name(path)
    strategy = next((s for r, s in compiled if r.fullmatch(name)),
                    "replicate")
    if strategy == "replicate":
      return NamedSharding(mesh, P())
    if strategy == "fsdp":
      return NamedSharding(mesh, _fsdp_spec(
          np.shape(leaf), mesh.shape["fsdp"], fsdp_min_size))
    if isinstance(strategy, (tuple, list)):
      return NamedSharding(mesh, P(*strategy))
    raise ValueError(f"Unknown sharding strategy {strategy!r} for {name!r}; "
                     "use 'replicate', 'fsdp' or a PartitionSpec tuple.")
  return jax.tree.map_with_path(spec_for, tree)
