"""The shared training loop: logging, NaN stop, chunking, host batches."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common import config as config_lib
from common import loop


def _quadratic_problem(target=3.0, learning_rate=0.1):
  """Minimise mean (w - x)^2 over batches x ~ N(target, 1), w of shape (3,)."""
  optimizer = optax.sgd(learning_rate)

  def loss_fn(params, model_state, batch, key):
    del key
    loss = jnp.mean((params['w'] - batch) ** 2)
    return loss, (model_state, {})

  def batch_fn(step):
    key = jax.random.fold_in(jax.random.PRNGKey(42), step)
    return target + jax.random.normal(key, (5, 3))

  state = loop.TrainState.create({'w': jnp.zeros(3)}, optimizer)
  return state, loop.gradient_step(loss_fn, optimizer), batch_fn


def test_training_converges_and_logs_every_chunk(tmp_path):
  state, step_fn, batch_fn = _quadratic_problem()
  result = loop.train(state, step_fn, num_steps=250, seed=0,
                      workdir=str(tmp_path), batch_fn=batch_fn, log_every=100,
                      quiet=True)
  np.testing.assert_allclose(result.state.params['w'], 3.0, atol=0.3)
  assert int(result.state.step) == 250

  rows = [json.loads(line) for line in
          (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [row['step'] for row in rows] == [100, 200, 250]
  for key in ('loss', 'grad_norm', 'param_norm', 'update_norm',
              'steps_per_s'):
    assert all(np.isfinite(row[key]) for row in rows), key


def test_console_shows_the_chosen_evals_and_the_file_keeps_all(
    tmp_path, capsys):
  state, step_fn, batch_fn = _quadratic_problem()
  eval_fn = lambda state, step: {'shown': 1.5, 'hidden': 2.5}
  loop.train(state, step_fn, num_steps=20, seed=0, workdir=str(tmp_path),
             batch_fn=batch_fn, log_every=10, eval_fn=eval_fn,
             eval_every=10, console_evals=['shown'], name='quad')
  lines = [l for l in capsys.readouterr().out.splitlines()
           if l.startswith('[quad] step')]
  assert len(lines) == 2
  assert all('shown=1.5' in l and 'hidden' not in l for l in lines)
  rows = [json.loads(line) for line in
          (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert rows[-1]['eval/hidden'] == 2.5


def test_resumed_history_covers_the_whole_run(tmp_path):
  state, step_fn, batch_fn = _quadratic_problem()
  run = lambda steps: loop.train(
      state, step_fn, num_steps=steps, seed=0, workdir=str(tmp_path),
      batch_fn=batch_fn, log_every=10, checkpoint_every=10, quiet=True)
  run(20)
  resumed = run(30)
  assert resumed.resumed_from == 20
  assert [row['step'] for row in resumed.history] == [10, 20, 30]
  finished = run(30)  # Nothing left to train.
  assert [row['step'] for row in finished.history] == [10, 20, 30]


def test_chunk_length_does_not_change_the_result():
  state, step_fn, batch_fn = _quadratic_problem()
  runs = [loop.train(state, step_fn, num_steps=60, seed=1, workdir=None,
                     batch_fn=batch_fn, log_every=every, quiet=True)
          for every in (7, 60)]
  np.testing.assert_array_equal(runs[0].state.params['w'],
                                runs[1].state.params['w'])


def test_host_batches_equal_device_batches():
  state, step_fn, batch_fn = _quadratic_problem()
  on_device = loop.train(state, step_fn, num_steps=30, seed=0, workdir=None,
                         batch_fn=batch_fn, log_every=10, quiet=True)
  host_fn = lambda step: np.asarray(batch_fn(step))
  on_host = loop.train(state, step_fn, num_steps=30, seed=0, workdir=None,
                       host_batch_fn=host_fn, log_every=10, quiet=True)
  np.testing.assert_allclose(on_device.state.params['w'],
                             on_host.state.params['w'], rtol=1e-6)


def test_nan_stops_the_run_naming_the_step():
  state, step_fn, _ = _quadratic_problem()

  def poisoned(step):
    return jnp.where(step == 13, jnp.nan, 1.0) * jnp.ones((5, 3))

  with pytest.raises(loop.NonFiniteError, match='at step 13'):
    loop.train(state, step_fn, num_steps=40, seed=0, workdir=None,
               batch_fn=poisoned, log_every=10, quiet=True)


def test_errors_in_host_batches_reach_the_caller():
  state, step_fn, _ = _quadratic_problem()

  def broken(step):
    raise RuntimeError(f'no data for step {step}')

  with pytest.raises(RuntimeError, match='no data for step 0'):
    loop.train(state, step_fn, num_steps=10, seed=0, workdir=None,
               host_batch_fn=broken, log_every=5, quiet=True)


def test_bad_loop_arguments_are_clear():
  state, step_fn, batch_fn = _quadratic_problem()
  with pytest.raises(ValueError, match='exactly one'):
    loop.train(state, step_fn, num_steps=10, seed=0, workdir=None)
  with pytest.raises(ValueError, match='multiple of log_every'):
    loop.train(state, step_fn, num_steps=10, seed=0, workdir=None,
               batch_fn=batch_fn, log_every=3, checkpoint_every=5)


def test_config_checks_name_the_key_and_the_fix():
  config = config_lib.training_defaults()
  import ml_collections
  config = ml_collections.ConfigDict({'seed': 0, 'train': config})
  config_lib.require_training(config)

  config.train.batch_size = 0
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.train\.batch_size=0 must be >= 1.*'
                           r'--config\.train\.batch_size='):
    config_lib.require_training(config)
  config.train.batch_size = 8
  config.train.learning_rate = float('inf')
  with pytest.raises(config_lib.ConfigError, match='finite'):
    config_lib.require_training(config)
  with pytest.raises(config_lib.ConfigError, match='missing'):
    config_lib.require_int(config, 'train.momentum')
