"""Pre-emption: a signal mid-run, a restart, the same parameters; and
checkpoints that a kill or a bad disk left unreadable."""

import glob
import os
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import app
from common import checkpoint
from common import sweep
import launch_helpers

# Long enough for the signal to land mid-run, in chunks of 10 steps.
LONG = {'train.num_steps': 800, 'train.log_every': 10,
        'train.checkpoint_every': 400, 'train.batch_size': 32}


def _wait_for_progress(path, process, timeout=120.0):
  start = time.monotonic()
  while time.monotonic() - start < timeout and process.poll() is None:
    if os.path.exists(path) and os.path.getsize(path) > 0:
      return
    time.sleep(0.02)
  raise AssertionError(f'No training progress in {path} (rc '
                       f'{process.poll()}).')


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM])
def test_signal_then_restart_gives_identical_parameters(tmp_path, signum):
  workdir = tmp_path / 'cut'
  command = launch_helpers.app_command(workdir, **LONG)
  process = subprocess.Popen(command, cwd=launch_helpers.ROOT,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  _wait_for_progress(workdir / 'metrics.jsonl', process)
  process.send_signal(signum)
  output = process.communicate(timeout=120)[0]
  assert process.returncode == app.EXIT_PREEMPTED, output[-3000:]
  assert f'received signal {int(signum)} at step' in output
  stopped_at = launch_helpers.final_params(workdir)['step']
  assert 0 < stopped_at < 800 and stopped_at % 10 == 0

  # The same command again resumes and finishes.
  again = subprocess.run(command, cwd=launch_helpers.ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         timeout=120)
  assert again.returncode == 0, again.stdout[-3000:]
  assert f'resuming from the checkpoint at step {stopped_at}' in again.stdout

  # An uninterrupted run (in this process) ends with the same parameters.
  sweep.execute(launch_helpers.fast_config(**LONG), str(tmp_path / 'full'))
  resumed = launch_helpers.final_params(workdir)
  full = launch_helpers.final_params(tmp_path / 'full')
  assert resumed['step'] == full['step'] == 800
  jax.tree.map(np.testing.assert_array_equal, resumed['params'],
               full['params'])


def _tree(value):
  return {'w': jnp.full((3, 5), value, jnp.float32),
          'b': jnp.arange(7, dtype=jnp.int32) + int(value)}


@pytest.mark.parametrize('damage', ['garbled', 'emptied'])
def test_unreadable_checkpoint_falls_back_to_the_previous(tmp_path, capsys,
                                                          damage):
  directory = str(tmp_path / 'checkpoints')
  saver = checkpoint.Checkpointer(directory, max_to_keep=3)
  for step in (10, 20, 30):
    saver.save(step, _tree(step))
  saver.close()

  # Step 30 damaged after the fact; a write cut short before its rename.
  for path in glob.glob(os.path.join(directory, '30', '**'), recursive=True):
    if os.path.isfile(path):
      if damage == 'garbled':
        with open(path, 'wb') as f:
          f.write(b'\x00 not a checkpoint')
      else:
        os.remove(path)
  half = os.path.join(directory, '40.orbax-checkpoint-tmp-1700000000')
  os.makedirs(os.path.join(half, 'default'))
  with open(os.path.join(half, 'default', 'partial'), 'wb') as f:
    f.write(b'\x00' * 13)

  loader = checkpoint.Checkpointer(directory, max_to_keep=3)
  step, tree = loader.restore_latest(_tree(0))
  assert step == 20
  np.testing.assert_array_equal(tree['w'], np.full((3, 5), 20.0))
  assert 'skipping unreadable checkpoint 30' in capsys.readouterr().out

  # The resumed run can write step 30 again; the damaged one is kept aside.
  loader.save(30, _tree(31), wait=True)
  assert loader.steps() == [10, 20, 30]
  assert os.path.isdir(os.path.join(directory, '30.unreadable'))
  step, tree = loader.restore_latest(_tree(0))
  assert step == 30 and int(tree['b'][0]) == 31
  loader.close()
