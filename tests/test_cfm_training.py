"""End-to-end flow matching: training lowers W2, resume, bad configs."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from cfm import experiment
from cfm import training
from common import config as config_lib
from experiments.cfm.configs import digits_conditional
from experiments.cfm.configs import gaussians_to_moons

CONFIG_PATH = 'experiments/cfm/configs/gaussians_to_moons.py'


def _tiny(method='icfm', steps=300):
  config = gaussians_to_moons.get_config('tiny')
  config.method = method
  config.train.num_steps = steps
  config.train.checkpoint_every = 0
  if method == 'sbcfm':
    config.sigma = 1.0
  return config


@pytest.mark.slow
@pytest.mark.parametrize('method', ['icfm', 'otcfm', 'sbcfm'])
def test_training_lowers_w2(method):
  config = _tiny(method)
  result, model, data, _ = training.train_flow(config, None, quiet=True)
  key = jax.random.PRNGKey(5)
  init_params = model.init(jax.random.PRNGKey(0), np.zeros(4, np.float32),
                           np.zeros((4, 2), np.float32))
  before, _ = training.evaluate_flow(model, init_params, data,
                                     num_samples=300, key=key,
                                     solver='euler', num_steps=20)
  after, _ = training.evaluate_flow(model, result.state.params, data,
                                    num_samples=300, key=key,
                                    solver='euler', num_steps=20)
  assert after.w2 < 0.6 * before.w2


def test_otcfm_paths_are_straighter_than_icfm():
  """After equal training, OT-CFM's NPE is well below I-CFM's."""
  npe = {}
  for method in ('icfm', 'otcfm'):
    config = _tiny(method, steps=600)
    result, model, data, _ = training.train_flow(config, None, quiet=True)
    evaluation, _ = training.evaluate_flow(
        model, result.state.params, data, num_samples=300,
        key=jax.random.PRNGKey(1), solver='euler', num_steps=20)
    npe[method] = evaluation.npe
  assert npe['otcfm'] < 0.5 * npe['icfm']


@pytest.mark.parametrize('method', ['icfm', 'otcfm'])
def test_resumed_run_equals_uninterrupted(tmp_path, method):
  config = _tiny(method, steps=400)
  config.train.checkpoint_every = 100
  full, _, _, _ = training.train_flow(config, str(tmp_path / 'full'),
                                      quiet=True)

  # The same run stopped at step 200, then started again on its workdir.
  config.train.num_steps = 200
  training.train_flow(config, str(tmp_path / 'cut'), quiet=True)
  config.train.num_steps = 400
  resumed, _, _, _ = training.train_flow(config, str(tmp_path / 'cut'),
                                         quiet=True)
  assert resumed.resumed_from == 200
  jax.tree.map(np.testing.assert_array_equal, full.state.params,
               resumed.state.params)


@pytest.mark.slow
def test_class_conditional_digits_trains(tmp_path):
  config = digits_conditional.get_config('tiny')
  config.train.num_steps = 100
  config.model.width = 64
  experiment.validate(config)
  numbers = experiment.train_and_evaluate(config, str(tmp_path), quiet=True)
  assert np.isfinite(numbers['w2'])
  assert numbers['w2_noise_floor'] > 0


@pytest.mark.parametrize('key, value, message', [
    ('target', 'spiral', 'config.target'),
    ('method', 'fm9', 'config.method'),
    ('train.batch_size', 0, 'config.train.batch_size'),
    ('train.learning_rate', float('nan'), 'config.train.learning_rate'),
    ('train.num_steps', -5, 'config.train.num_steps'),
    ('coupling', 'greedy', 'config.coupling'),
])
def test_bad_configs_name_the_key(key, value, message):
  config = gaussians_to_moons.get_config('tiny')
  node, leaf = config, key
  if '.' in key:
    block, leaf = key.split('.')
    node = config[block]
  with node.unlocked():
    node[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=message.replace('.', r'\.')):
    experiment.validate(config)


def test_sbcfm_with_non_positive_sigma_is_a_config_error():
  config = gaussians_to_moons.get_config('tiny')
  config.method = 'sbcfm'
  config.sigma = 0.0
  with pytest.raises(config_lib.ConfigError, match=r'config\.sigma'):
    experiment.validate(config)


def _launch(*flags):
  return subprocess.run(
      [sys.executable, '-m', 'experiments.cfm.launch', *flags],
      capture_output=True, text=True, timeout=300)


def test_launcher_rejects_bad_values_before_any_work(tmp_path):
  run = _launch(f'--config={CONFIG_PATH}:tiny', f'--workdir={tmp_path}',
                '--config.train.batch_size=-3')
  assert run.returncode != 0
  assert 'config.train.batch_size' in run.stderr
  assert not (tmp_path / 'checkpoints').exists()

  run = _launch(f'--config={CONFIG_PATH}:tiny', f'--workdir={tmp_path}',
                '--config.no_such_key=1')
  assert run.returncode != 0
  assert 'no_such_key' in run.stderr


@pytest.mark.slow
def test_launcher_tiny_run_writes_results(tmp_path):
  run = _launch(f'--config={CONFIG_PATH}:tiny', f'--workdir={tmp_path}',
                '--config.method=otcfm')
  assert run.returncode == 0, run.stderr[-2000:]
  assert (tmp_path / 'results.json').exists()
  assert (tmp_path / 'metrics.jsonl').read_text().count('\n') == 2


def test_launcher_refuses_a_workdir_of_another_config(tmp_path):
  (tmp_path / 'config.json').write_text('{"line": "cfm", "method": "icfm"}')
  run = _launch(f'--config={CONFIG_PATH}:tiny', f'--workdir={tmp_path}')
  assert run.returncode != 0
  assert 'holds a run with another config' in run.stderr
  assert not (tmp_path / 'checkpoints').exists()


def test_launcher_names_a_missing_config_file(tmp_path):
  run = _launch('--config=experiments/cfm/configs/no_such_task.py',
                f'--workdir={tmp_path}')
  assert run.returncode != 0
  assert 'no_such_task.py' in run.stderr
  assert 'Traceback' not in run.stderr
