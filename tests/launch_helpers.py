"""Shared pieces of the launch tests: a seconds-long cfm config, commands."""

import os
import socket
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from experiments.cfm.configs import gaussians_to_moons

CONFIG_PATH = 'experiments/cfm/configs/gaussians_to_moons.py:tiny'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --config.* overrides that make the tiny config a few seconds long.
FAST = {'method': 'icfm', 'train.num_steps': 40, 'train.log_every': 20,
        'train.checkpoint_every': 20, 'train.batch_size': 64,
        'model.width': 16, 'eval.solver': 'euler', 'eval.euler_steps': 8,
        'eval.num_samples': 64}


def fast_config(**overrides):
  config = gaussians_to_moons.get_config('tiny')
  for key, value in {**FAST, **overrides}.items():
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def app_command(workdir, *extra, **overrides) -> list[str]:
  flags = [f'--config.{k}={v}' for k, v in {**FAST, **overrides}.items()]
  return [sys.executable, '-m', 'common.app', f'--config={CONFIG_PATH}',
          f'--workdir={workdir}', *flags, *extra]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def final_params(workdir) -> dict:
  """The parameters of the newest checkpoint of a run, on this process's
  first device (whatever devices and processes wrote it)."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  step = max(int(name) for name in os.listdir(directory) if name.isdigit())
  path = os.path.join(directory, str(step), 'default')
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      checkpointer.metadata(path).item_metadata)
  tree = checkpointer.restore(path, target)
  checkpointer.close()
  return {'step': int(np.asarray(tree['step'])), 'params': tree['params']}
