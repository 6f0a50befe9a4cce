"""The two-pass protocol, its controls and the per-run summaries."""

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest

from common import data as data_lib
from geometry import protocol
from geometry import quantities
from geometry import setups


@pytest.fixture(scope='module')
def digits():
  return data_lib.load('digits', seed=0)


def _setup(digits, **kwargs):
  args = dict(seeds=(3, 4), widths=(9,), batch_size=13, num_steps=30,
              learning_rate=0.1, probe_every=7, num_probe_batches=2,
              probe_batch_size=17)
  args.update(kwargs)
  return setups.classifier_setup(digits, **args)


@pytest.fixture(scope='module')
def setup(digits):
  return _setup(digits)


@pytest.fixture(scope='module')
def trajectory(setup):
  return protocol.run(setup, seed=0)


@pytest.mark.slow
def test_replay_is_bit_exact_and_ends_on_w_star(trajectory):
  assert trajectory.replay_exact
  # At the last recorded step, w_{T-1} is one step away from w* = w_T.
  geo = trajectory.geometry('mb', 'final')
  dist = np.asarray(geo.dist)
  assert dist.shape == (30, 2)
  assert np.all(dist[-1] < dist[0])
  np.testing.assert_allclose(
      np.asarray(trajectory.step_metrics['geo/disp/grad_norm'])[-1],
      dist[-1], rtol=1e-5)


@pytest.mark.slow
def test_controls_are_recorded(trajectory):
  assert trajectory.references == ('final', 'doubled', 'other_seed',
                                   'random')
  # The random direction has norm ||w_0 - w*|| at every step.
  final = np.asarray(trajectory.step_metrics['geo/dist/final'])
  random = np.asarray(trajectory.step_metrics['geo/dist/random'])
  np.testing.assert_allclose(random, np.broadcast_to(final[0], random.shape),
                             rtol=1e-5)
  # Fixed batches: (T, S, B), measured on steps 0, 7, 14, ...
  probe = np.asarray(trajectory.step_metrics['geo/probe/grad_norm'])
  assert probe.shape == (30, 2, 2)
  np.testing.assert_array_equal(np.flatnonzero(np.isfinite(probe[:, 0, 0])),
                                np.arange(0, 30, 7))


@pytest.mark.slow
def test_replay_mismatch_is_detected(setup):
  setup = dataclasses.replace(setup, num_steps=8)

  def step_for(probe_list):
    # The measuring pass secretly uses another learning rate.
    lr = 0.1 if not probe_list else 0.2
    return protocol.population_step(setup.loss_fn, optax.sgd(lr),
                                    probes=probe_list)

  with pytest.raises(protocol.ReplayMismatch, match='not reproducible'):
    protocol.two_pass(init_fn=lambda: protocol.init_state(setup),
                      step_for=step_for,
                      probes_for=lambda refs: protocol.make_probes(setup,
                                                                   refs)[:1],
                      batch_fn=setup.batch_fn, num_steps=8,
                      controls=('random',))


def test_bad_protocol_inputs(digits, setup):
  with pytest.raises(ValueError, match='Unknown controls'):
    protocol.run(setup, controls=('tripled',))
  one_seed = dataclasses.replace(
      setup, params=jax.tree.map(lambda x: x[:1], setup.params))
  with pytest.raises(ValueError, match='at least 2 seeds'):
    protocol.run(one_seed)
  with pytest.raises(ValueError, match='batch_size=5000'):
    _setup(digits, batch_size=5000)


def test_summary_against_hand_counts():
  # 20 steps, 2 members; gamma = inner / (grad_norm * dist).
  inner = np.ones((20, 2))
  inner[3, 0] = -1.0          # one wrong turn early for member 0
  inner[19, 1] = -1.0         # one in the last 10% for member 1
  inner[5, 1] = np.nan        # an unmeasured step
  geo = quantities.Geometry(inner=inner, grad_norm=np.full((20, 2), 2.0),
                            dist=np.full((20, 2), 0.5))
  member0, member1 = protocol.summarize(geo, 20)
  assert member0['frac_gamma_positive_early'] == pytest.approx(17 / 18)
  assert member0['frac_gamma_positive'] == pytest.approx(19 / 20)
  assert member1['frac_gamma_positive_early'] == 1.0
  assert member1['frac_gamma_positive'] == pytest.approx(18 / 19)
  assert member1['num_measured'] == 19
  assert member0['gamma']['q50'] == pytest.approx(1.0)
  assert member0['rsi']['q50'] == pytest.approx(4.0)
  assert member0['eb']['q50'] == pytest.approx(4.0)
  assert member0['eta_star']['q50'] == pytest.approx(0.25)
  assert member0['late_rise_rsi'] == pytest.approx(1.0)


def test_chunk_length_divides_the_budget():
  assert protocol.chunk_length(1000) == 1000
  assert protocol.chunk_length(2400) == 800
  assert protocol.chunk_length(37) == 37
  assert 1013 % protocol.chunk_length(1013) == 0


def test_read_steps_round_trip(tmp_path):
  path = tmp_path / 'steps.jsonl'
  rows = [{'step': 1, 'geo/x': [1.0, float('nan')]},
          {'step': 0, 'geo/x': [2.0, 3.0]}]
  path.write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
  out = protocol.read_steps(str(path), ['geo/x'])
  np.testing.assert_array_equal(out['step'], [0, 1])
  np.testing.assert_array_equal(out['geo/x'], [[2.0, 3.0], [1.0, np.nan]])


@pytest.mark.slow
def test_app_tiny_config_end_to_end(tmp_path):
  from experiments.geometry.configs import mlp  # pylint: disable=g-import-not-at-top
  from geometry import experiment  # pylint: disable=g-import-not-at-top

  config = mlp.get_config('tiny')
  experiment.validate(config)
  results = experiment.train_and_evaluate(config, str(tmp_path))
  runs = results['runs']
  assert len(runs) == config.num_seeds
  for run in runs:
    assert {'dataset', 'batch_size', 'seed', 'gamma_median',
            'frac_gamma_positive_early'} <= set(run)
    assert run['replay_exact']
  assert (tmp_path / 'geometry.png').exists()
  assert (tmp_path / runs[0]['dataset'] / 'steps.jsonl').exists() or any(
      tmp_path.glob('*/steps.jsonl'))
  jax.clear_caches()


def test_config_errors_name_the_key():
  from common import config as config_lib  # pylint: disable=g-import-not-at-top
  from experiments.geometry.configs import mlp  # pylint: disable=g-import-not-at-top
  from geometry import experiment  # pylint: disable=g-import-not-at-top

  config = mlp.get_config('tiny')
  config.sweep.batch_sizes = '16,-4'
  with pytest.raises(config_lib.ConfigError, match='sweep.batch_sizes'):
    experiment.validate(config)
  config = mlp.get_config('tiny')
  config.sweep.optimizers = 'sgd,lbfgs'
  with pytest.raises(config_lib.ConfigError, match='sweep.optimizers'):
    experiment.validate(config)
  config = mlp.get_config('tiny')
  config.num_seeds = 1
  with pytest.raises(config_lib.ConfigError, match='other_seed'):
    experiment.validate(config)
