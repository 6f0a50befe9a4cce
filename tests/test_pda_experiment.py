"""PDA line end to end: config checks and the tiny main section."""

import json
import os
import shutil

import pytest

from common import config as config_lib
from experiments.pda.configs import grid as grid_config
from experiments.pda.configs import single as single_config
from pda import experiment
from pda import protocol
from pda import selection


def test_validate_names_bad_keys():
  config = grid_config.get_config('tiny')
  config.methods = 'pada,nope'
  with pytest.raises(config_lib.ConfigError, match='methods'):
    experiment.validate(config)
  config = single_config.get_config('tiny')
  config.hp = '{"epsilon": 0.5}'
  with pytest.raises(config_lib.ConfigError, match='lacks'):
    experiment.validate(config)
  config = grid_config.get_config('tiny')
  config.train.num_steps = 25
  with pytest.raises(config_lib.ConfigError, match='log_every'):
    experiment.validate(config)
  config = grid_config.get_config('tiny')
  config.train.checkpoint_every = 15
  with pytest.raises(config_lib.ConfigError, match='checkpoint_every'):
    experiment.validate(config)


def test_single_run_tiny(tmp_path):
  config = single_config.get_config('tiny')
  config.methods = 'pada'
  config.hp = '{"lambda": 1.0}'
  experiment.validate(config)
  out = experiment.train_and_evaluate(config, str(tmp_path))
  assert set(out['checkpoint_scores']) == set(selection.SELECTIONS)
  assert len(out['checkpoint_scores']['oracle']) == 2


def _single_config():
  config = single_config.get_config('tiny')
  config.methods = 'source_only'
  config.hp = '{}'
  config.train.checkpoint_every = 10
  experiment.validate(config)
  return config


@pytest.mark.slow
def test_stopped_single_run_resumes_exactly(tmp_path):
  # Stopped after the step-10 checkpoint: the train state and the outputs of
  # step 10 are on disk, those of step 20 are not.
  config = _single_config()
  full = experiment.train_and_evaluate(config, str(tmp_path / 'a'))
  shutil.rmtree(tmp_path / 'a' / 'checkpoints' / '20')
  os.remove(tmp_path / 'a' / 'outputs' / 'step_00000020.npz')
  resumed = experiment.train_and_evaluate(config, str(tmp_path / 'a'))
  assert resumed['checkpoint_scores'] == full['checkpoint_scores']
  logged = [json.loads(line)['step']
            for line in open(tmp_path / 'a' / 'metrics.jsonl')]
  assert logged == [10, 20]

  # A finished run only re-scores; another member set is refused.
  again = experiment.train_and_evaluate(config, str(tmp_path / 'a'))
  assert again['checkpoint_scores'] == full['checkpoint_scores']
  with pytest.raises(ValueError, match='other members'):
    protocol.check_members(str(tmp_path / 'a'), [{}], [1])


@pytest.mark.slow
def test_main_section_tiny(tmp_path):
  section = experiment.main_section(str(tmp_path), tiny=True)
  results = section.results['results']
  assert set(results) == {'source_only', 'pada', 'safn', 'ba3us', 'ar',
                          'jumbot', 'mpot'}
  for by_selection in results.values():
    assert set(by_selection) == set(selection.SELECTIONS)
    assert all(0.0 <= v <= 1.0 for v in by_selection.values())
  assert (tmp_path / 'table.csv').exists() and 'oracle' in section.markdown


def test_missing_benchmark_features_name_the_config_keys(tmp_path):
  config = grid_config.get_config('tiny')
  config.tasks = 'office_home'
  config.data.features_dir = str(tmp_path)
  with pytest.raises(experiment.data.DataError,
                     match=r'Art\.npz.*--config\.data\.features_dir='):
    experiment.train_and_evaluate(config, str(tmp_path / 'run'))
