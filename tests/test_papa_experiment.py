"""PAPA experiment wiring: config checks and the tiny end-to-end run."""

import json
import os

import jax
import pytest

from common import app
from common import config as config_lib
from experiments.papa.configs import cifar10
from experiments.papa.configs import cifar100
from experiments.papa.configs import digits
from experiments.papa.configs import mnist1d
from papa import experiment
from papa import reporting


@pytest.mark.parametrize('module', [mnist1d, digits, cifar10, cifar100])
def test_configs_validate(module):
  experiment.validate(module.get_config())
  experiment.validate(module.get_config('tiny'))


@pytest.mark.parametrize('key, value, match', [
    ('papa.a', 1.0, 'papa.a'),
    ('papa.every', 0, 'papa.every'),
    ('papa.every_epochs', 0.0, 'papa.every_epochs'),
    ('population.size', 1, 'population.size'),
    ('methods', 'papa,papa3', 'methods'),
    ('model.name', 'vgg', 'model.name'),
    ('model.conv', 'fft', 'model.conv'),
    ('train.checkpoint_every', 25, 'checkpoint_every'),
])
def test_bad_settings_name_their_key(key, value, match):
  config = mnist1d.get_config('tiny')
  config.papa.auto = False
  section, _, leaf = key.rpartition('.')
  (config[section] if section else config)[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    experiment.validate(config)


def test_devices_that_cannot_split_the_members_name_the_key():
  config = mnist1d.get_config('tiny')  # 4 methods x 2 seeds x 3 = 24.
  config.population.num_devices = 99
  with pytest.raises(config_lib.ConfigError, match='exceeds'):
    experiment.validate(config)
  config.population.num_devices = 1
  experiment.validate(config)
  assert len(jax.devices()) >= 4, 'conftest should give 4 CPU devices'
  config.population.size = 5  # 40 members: 4 splits them, 3 does not.
  config.population.num_devices = 4
  experiment.validate(config)
  config.population.num_devices = 3
  with pytest.raises(config_lib.ConfigError,
                     match=r'population.num_devices=3 does not split'):
    experiment.validate(config)


def test_independent_alone_allows_one_member():
  config = mnist1d.get_config('tiny')
  config.methods = 'independent'
  config.population.size = 1
  experiment.validate(config)


def test_data_args_only_for_mnist1d():
  config = digits.get_config('tiny')
  config.data_args.num_samples = 100
  with pytest.raises(config_lib.ConfigError, match='data_args'):
    experiment.validate(config)


def test_tiny_run_end_to_end(tmp_path):
  # Every method, one seed of P = 3 (odd: PAPA-2 leaves one out), on digits
  # (embedded, loads fastest): trains, scores, plots, writes the table.
  config = digits.get_config('tiny')
  config.population.seeds = 1
  app.prepare(config, str(tmp_path))
  out = experiment.train_and_evaluate(config, str(tmp_path), quiet=True)
  json.dumps(out)
  assert set(out['results']) == {'independent', 'papa', 'papa_all',
                                 'papa_2'}
  for name, summary in out['results'].items():
    for key in experiment.SCORES:
      assert 0.0 <= summary[key] <= 1.0, (name, key)
    assert len(summary['per_seed']) == 1
  assert out['members'] == 4 * 3
  assert os.path.exists(tmp_path / 'accuracy_vs_step.png')
  assert os.path.exists(tmp_path / 'results.md')


def test_launching_a_finished_run_again_reports_the_same(tmp_path):
  config = digits.get_config('tiny')
  config.population.seeds = 1
  config.methods = 'independent,papa_all'
  app.prepare(config, str(tmp_path))
  first = experiment.train_and_evaluate(config, str(tmp_path), quiet=True)
  again = experiment.train_and_evaluate(config, str(tmp_path), quiet=True)
  assert again['results']['papa_all']['member_mean'] == (
      first['results']['papa_all']['member_mean'])
  assert again['curves'] == first['curves'] and first['curves']['papa_all']


def test_findings_compare_with_independent_members_and_ensemble():
  def summary(member, ensemble, soup, std=0.005):
    return dict(member_mean=member, member_mean_std=std, ensemble=ensemble,
                uniform_soup=soup, greedy_soup=soup)
  lines = reporting.findings({
      'independent': summary(0.686, 0.736, 0.098),
      'papa_all': summary(0.716, 0.716, 0.716),
      'papa_2': summary(0.690, 0.690, 0.690, std=0.015)})
  assert lines[0].startswith('- PAPA-all raises mean member accuracy')
  assert '(+3.0 points' in lines[0]
  assert '71.6%, best soup) is 2.0 points below the ensemble' in lines[0]
  assert 'PAPA-2 does not clearly raise' in lines[1]
  assert 'collapses towards chance' in lines[2]
