"""Several processes (hosts) as one run, through `jax.distributed`.

Every process runs the same program. `initialize` joins them: with an
explicit coordinator (flags or the JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID variables), or from the environment of a
Slurm step with several tasks or of a multi-host TPU slice, where JAX finds
the coordinator itself. Afterwards `jax.devices()` lists the devices of all
processes, and the training loop lays its arrays over all of them
(`global_mesh`, `place`): parameters replicated, the batch (or population)
axis split, so each process computes and feeds only its own rows and the
gradient all-reduce happens inside the jitted step. Only process 0 writes
logs and reports (`is_main_process`); checkpoints are written by all
processes together, with orbax keeping the metadata on process 0.
"""

import os
from typing import Any

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXIS = 'data'
_ALL_DEVICES = {'requested': False}


def _from_slurm() -> bool:
  """Inside a Slurm step (srun) with more than one task."""
  return ('SLURM_STEP_ID' in os.environ and
          int(os.environ.get('SLURM_NTASKS', '1')) > 1)


def _from_tpu() -> bool:
  """On one host of a multi-host TPU slice (the runtime lists every host)."""
  return ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins a multi-process run if one is configured; call before using JAX.

  Args:
    coordinator_address: 'host:port' of process 0; falls back to
      $JAX_COORDINATOR_ADDRESS. Without either, Slurm or TPU environments are
      detected, and otherwise the run is a single process.
    num_processes: how many processes take part (or $JAX_NUM_PROCESSES).
    process_id: this process's index, 0 .. num_processes - 1 (or
      $JAX_PROCESS_ID).

  Returns:
    True when this process is one of several.
  """
  if jax.distributed.is_initialized():
    return jax.process_count() > 1

  env = os.environ
  coordinator_address = (coordinator_address or
                         env.get('JAX_COORDINATOR_ADDRESS') or None)
  if coordinator_address:
    num_processes = num_processes or int(env.get('JAX_NUM_PROCESSES', '0'))
    if process_id is None and 'JAX_PROCESS_ID' in env:
      process_id = int(env['JAX_PROCESS_ID'])
    if not num_processes or process_id is None:
      raise ValueError(
          f'coordinator_address={coordinator_address!r} also needs '
          'num_processes and process_id (flags --num_processes and '
          '--process_id, or $JAX_NUM_PROCESSES and $JAX_PROCESS_ID).')
    if not 0 <= process_id < num_processes:
      raise ValueError(f'process_id={process_id} must lie in [0, '
                       f'{num_processes}) (num_processes={num_processes}).')
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  elif _from_slurm() or _from_tpu():
    jax.distributed.initialize()
  else:
    return False
  return jax.process_count() > 1


def use_all_devices(requested: bool = True) -> None:
  """Asks the loop to lay out a single process's runs over all its devices.

  With several processes this is always on; with one it is off by default,
  so a run on one machine keeps its lines' own layouts.
  """
  _ALL_DEVICES['requested'] = requested


def loop_mesh(state: Any) -> Mesh | None:
  """The mesh the training loop should use for `state`, or None.

  A state that already lies over all devices (a line's own population mesh)
  keeps that mesh; otherwise a 1-D mesh over all devices, when there are
  several processes or `use_all_devices` was called.
  """
  if jax.process_count() == 1 and not _ALL_DEVICES['requested']:
    return None
  for leaf in jax.tree.leaves(state):
    sharding = getattr(leaf, 'sharding', None)
    if (isinstance(sharding, NamedSharding) and
        sharding.mesh.size == jax.device_count()):
      return sharding.mesh
  return global_mesh()


def is_main_process() -> bool:
  """Process 0 writes logs, reports and results."""
  return jax.process_index() == 0


def global_mesh() -> Mesh:
  """A 1-D mesh over the devices of all processes, axis `DATA_AXIS`."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def leading_axis_sharding(mesh: Mesh, shape: tuple[int, ...],
                          axis: int = 0) -> NamedSharding:
  """Splits `axis` over the mesh's first axis when it divides evenly, else
  replicates."""
  if len(shape) > axis and shape[axis] % mesh.size == 0:
    return NamedSharding(mesh, P(*([None] * axis), mesh.axis_names[0]))
  return NamedSharding(mesh, P())


def place(tree: Any, shardings: Any) -> Any:
  """Lays host-identical values out as global arrays.

  Every process holds the same full value (a pure function of the seed);
  each builds only the shards of its own devices from it, which is also how
  a process ends up computing with only its own rows of a batch.
  """
  def one(x, sharding):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])

  return jax.tree.map(one, tree, shardings)


def to_local(tree: Any) -> Any:
  """Global arrays back to arrays this process holds in full.

  Needed after a multi-process run, since code outside the loop (evaluation,
  plots) works on ordinary arrays.
  """
  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return x
    if x.is_fully_replicated:
      return x.addressable_data(0)
    return jax.numpy.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on at least one.

  The loop uses it so that all processes stop at the same chunk when a
  signal reaches only some of them (collectives would otherwise hang).
  """
  if jax.process_count() == 1:
    return flag
  flags = multihost_utils.process_allgather(np.int32(flag))
  return bool(np.max(flags))
