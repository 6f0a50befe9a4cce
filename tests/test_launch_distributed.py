"""Two processes joined by jax.distributed train like one process; the
loop's layout over several devices leaves results unchanged."""

import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common import distributed
from common import loop
from common import sweep
import launch_helpers


@pytest.mark.slow
def test_two_cpu_processes_match_one_process(tmp_path):
  # Each process has 2 CPU devices: the batch of 64 splits over 4 devices of
  # 2 processes, each process drawing and uploading only its own rows.
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  workdir = tmp_path / 'two'
  port = launch_helpers.free_port()
  processes = [
      subprocess.Popen(
          launch_helpers.app_command(
              workdir, f'--coordinator_address=127.0.0.1:{port}',
              '--num_processes=2', f'--process_id={i}'),
          cwd=launch_helpers.ROOT, env=env, stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=150)[0] for p in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]

  # Only process 0 logs and reports.
  assert '2 process(es)' in outputs[0]
  assert 'step 40/40' in outputs[0] and 'step 40/40' not in outputs[1]
  with open(workdir / 'metrics.jsonl') as f:
    assert [json.loads(line)['step'] for line in f] == [20, 40]

  # The same run in one process (this one, no layout).
  config = launch_helpers.fast_config()
  one = sweep.execute(config, str(tmp_path / 'one'))
  with open(workdir / 'results.json') as f:
    two = json.load(f)
  np.testing.assert_allclose(two['w2'], one['w2'], rtol=1e-4)

  # Equal up to the order of the gradient all-reduce's float additions.
  a = launch_helpers.final_params(workdir)
  b = launch_helpers.final_params(tmp_path / 'one')
  assert a['step'] == b['step'] == 40
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5,
                                                       atol=1e-6),
               a['params'], b['params'])


def _regression(population: int | None):
  """A linear least-squares demo: (state, step_fn, batch_fn) for the loop."""
  optimizer = optax.sgd(0.1)
  w_true = jnp.arange(1.0, 4.0)

  def loss_fn(params, model_state, batch, key):
    del key
    x, y = batch
    loss = jnp.mean((x @ params['w'] + params['b'] - y) ** 2)
    return loss, (model_state, {})

  def batch_fn(step):
    x = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(3), step),
                          (12, 3))
    return x, x @ w_true + 0.5

  step_fn = loop.gradient_step(loss_fn, optimizer)
  params = {'w': jnp.zeros(3), 'b': jnp.zeros(())}
  if population is None:
    return loop.TrainState.create(params, optimizer), step_fn, batch_fn
  scales = jnp.linspace(0.5, 1.5, population)
  params = jax.vmap(lambda s: jax.tree.map(lambda p: p + s, params))(scales)
  state = jax.vmap(lambda p: loop.TrainState.create(p, optimizer))(params)
  state = state.replace(step=jnp.zeros((), jnp.int32))
  axes = loop.TrainState(step=None, params=0, opt_state=0, model_state=0)
  member_step = jax.vmap(step_fn, in_axes=(axes, None, None),
                         out_axes=(axes, 0))
  return state, member_step, batch_fn


@pytest.mark.parametrize('population', [None, 8])
def test_layout_over_all_devices_matches_one_device(population):
  """The loop's layout (batch or population split over the 4 simulated
  devices) changes where the work runs, not the result."""
  mesh = distributed.global_mesh()
  results = []
  for layout in ({}, {'mesh': mesh, 'shard_population': bool(population)}):
    state, step_fn, batch_fn = _regression(population)
    result = loop.train(state, step_fn, num_steps=30, seed=0, workdir=None,
                        batch_fn=batch_fn, log_every=10, quiet=True,
                        **layout)
    results.append(result)
  unsharded, sharded = results
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               unsharded.state.params, sharded.state.params)
  last, first = (np.asarray(sharded.history[i]['loss']) for i in (-1, 0))
  np.testing.assert_allclose(last, unsharded.history[-1]['loss'], rtol=1e-4)
  assert np.all(last < 0.1 * first)
