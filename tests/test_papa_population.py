"""Population training: copies equal single runs, sharding, BatchNorm, soups."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common import data as data_lib
from common import loop
from common import models as common_models
from papa import averaging
from papa import models
from papa import population
from papa import regularisers
from papa import soups

STEPS = 6


def _data(n=61, length=12, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, length, 1)).astype(np.float32)
  y = (x[:, :4, 0].sum(1) > 0).astype(np.int32) + 2 * (x[:, -1, 0] > 0)
  return data_lib.Split(x, y.astype(np.int32))


def _population(seeds, P, methods, mesh=None, grid=None, probes=()):
  optimizer = optax.adam(1e-2)
  grid = grid or regularisers.DEFAULT_GRID
  return population.Population(
      common_models.MLP(4, widths=(8,)), _data(), 4, member_seeds=seeds,
      group_size=P, optimizer=optimizer,
      learning_rate_fn=optax.cosine_decay_schedule(1e-2, STEPS),
      batch_size=7, hyper=regularisers.member_combinations(grid, seeds),
      methods=methods, mesh=mesh, probes=probes)


def _train(state, step_fn, batch_fn):
  return loop.train(state, step_fn, num_steps=STEPS, seed=5, workdir=None,
                    batch_fn=batch_fn, log_every=3, quiet=True).state


def _probe(view):
  # What a geometry probe reads: the loss and the step's own update.
  return {'probe_loss': view.loss,
          'probe_update': optax.global_norm(
              jax.tree.map(jnp.subtract, view.new_params, view.params))}


@pytest.mark.slow
def test_members_sharing_a_seed_equal_copies_of_the_single_run():
  # Two populations of three copies each (seeds 11 and 12), every
  # regulariser on so the per-member randomness is exercised too, and a
  # probe inside every member step.
  grid = {name: (0.3,) for name in regularisers.NAMES}
  pop = _population([11] * 3 + [12] * 3, 3,
                    population.Method('papa', every=2, a=0.5), grid=grid,
                    probes=[_probe])
  result = loop.train(pop.init(), pop.step_fn, num_steps=STEPS, seed=5,
                      workdir=None, batch_fn=pop.batch_fn, log_every=3,
                      quiet=True, keep_step_metrics=(
                          'loss', 'update_norm', 'probe_loss',
                          'probe_update'))
  final = result.state

  # Copies of a seed average to themselves: each equals the single run.
  state, step_fn, batch_fn = pop.single_run(0)
  single = _train(state, step_fn, batch_fn)
  for j in range(3):
    jax.tree.map(lambda p, s: np.testing.assert_allclose(p[j], s, atol=1e-5),
                 final.params, single.params)

  # Distinct seeds give distinct members.
  w = final.params['Dense_0']['kernel']
  assert not np.allclose(w[0], w[3])

  # Probes ran in every member's step: (steps, members) values that match
  # the step's own loss and update.
  metrics = result.step_metrics
  assert metrics['probe_loss'].shape == (STEPS, 6)
  np.testing.assert_allclose(metrics['probe_loss'], metrics['loss'])
  np.testing.assert_allclose(metrics['probe_update'],
                             metrics['update_norm'], rtol=1e-5)


@pytest.mark.slow
def test_sharded_over_four_devices_equals_unsharded():
  assert len(jax.devices()) >= 4, 'conftest should give 4 CPU devices'
  methods = [population.Method('papa', every=2, a=0.8),
             population.Method('papa_2', every=3, repair=True)]
  seeds = list(range(8))
  mesh = population.make_mesh(4)
  sharded = _population(seeds, 4, methods, mesh=mesh)
  state = sharded.init()
  leaf = jax.tree.leaves(state.params)[0]
  assert len(leaf.sharding.device_set) == 4
  final_sharded = _train(state, sharded.step_fn, sharded.batch_fn)
  assert len(jax.tree.leaves(final_sharded.params)[0].sharding.device_set) == 4

  plain = _population(seeds, 4, methods)
  final_plain = _train(plain.init(), plain.step_fn, plain.batch_fn)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               final_sharded.params, final_plain.params)


def test_papa_2_with_odd_population_leaves_one_member_as_it_is():
  tree = {'w': jnp.arange(5.0)}
  for seed in range(5):
    out = averaging.average_random_pairs(tree, jax.random.PRNGKey(seed))
    unchanged = np.flatnonzero(np.asarray(out['w']) == np.arange(5.0))
    assert len(unchanged) == 1
    # Pairs average: the total is conserved.
    assert float(out['w'].sum()) == pytest.approx(10.0)


def test_population_the_devices_cannot_split_is_refused():
  with pytest.raises(ValueError, match='cannot be split evenly'):
    _population(list(range(6)), 3, population.Method(),
                mesh=population.make_mesh(4))


def test_averaging_method_needs_two_members():
  with pytest.raises(averaging.AveragingError, match='P=1'):
    _population([0, 1], 1, population.Method('papa_all', every=2))


class _NormThenDense(nn.Module):
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.BatchNorm(use_running_average=not train,
                     momentum=self.bn_momentum)(x.reshape(len(x), -1))
    return nn.Dense(3)(h)


def test_batch_stats_recomputed_equal_numpy_statistics():
  model = _NormThenDense()
  x = np.random.default_rng(1).normal(2.0, 3.0, (4, 9, 5)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), x[0])
  stale = {'batch_stats': jax.tree.map(lambda s: s + 100.0,
                                       variables['batch_stats'])}
  fresh = soups.recompute_batch_stats(model, variables['params'], stale,
                                      jnp.asarray(x))
  stats = fresh['batch_stats']['BatchNorm_0']
  # Equal batch sizes: mean of batch means, mean of (biased) batch variances.
  np.testing.assert_allclose(stats['mean'], x.mean(axis=(0, 1)), rtol=1e-5)
  np.testing.assert_allclose(stats['var'], x.var(axis=2 - 1).mean(0),
                             rtol=1e-4)


@pytest.mark.slow
def test_resnet_with_recomputed_stats_matches_training_mode():
  model = models.ResNet20(5, width=4, blocks_per_stage=1)
  x = jax.random.normal(jax.random.PRNGKey(2), (16, 12, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  params, state = variables['params'], {'batch_stats':
                                        variables['batch_stats']}
  fresh = soups.finalize(model, params, state, x[None])

  # With the statistics of this very batch, evaluation equals training mode.
  @functools.partial(jax.jit, static_argnums=1)
  def logits(stats, train):
    if train:
      return model.apply({'params': params, **stats}, x, train=True,
                         mutable=['batch_stats'])[0]
    return model.apply({'params': params, **stats}, x, train=False)

  train_logits = logits(state, True)
  np.testing.assert_allclose(logits(fresh, False), train_logits, atol=1e-4)
  assert not np.allclose(logits(state, False), train_logits, atol=1e-2)


def test_soups_of_identical_members():
  model = common_models.MLP(4, widths=(6,))
  data = _data()
  params = model.init(jax.random.PRNGKey(0), data.x[:1])['params']
  pop = jax.tree.map(lambda w: jnp.stack([w] * 3), params)
  scores = soups.score_population(model, pop, {}, data, data, data.x[None],
                                  averaged=False)
  member = scores.members[0]
  np.testing.assert_allclose(scores.members, member)
  assert scores.ensemble == pytest.approx(member)
  assert scores.uniform_soup == pytest.approx(member)
  # No ingredient strictly raises held-out accuracy: the soup is one member.
  assert scores.greedy_members == (0,)


def test_weighted_mean_by_hand():
  tree = {'w': jnp.asarray([[1., 2.], [3., 4.], [9., 0.]])}
  out = soups.weighted_mean(tree, jnp.asarray([1., 1., 0.]))
  np.testing.assert_allclose(out['w'], [2., 3.])


def test_first_averaging_then_every_period():
  # PAPA-all after 2 steps, then every 3; PAPA-2 every 4 from the start;
  # independent never.
  pop = _population(list(range(6)), 2, [
      population.Method('papa_all', every=3, first=2),
      population.Method('papa_2', every=4),
      population.Method()])
  due = np.asarray([pop._due(jnp.int32(c)) for c in range(1, 11)])
  np.testing.assert_array_equal(np.flatnonzero(due[:, 0]) + 1, [2, 5, 8])
  np.testing.assert_array_equal(np.flatnonzero(due[:, 1]) + 1, [4, 8])
  assert not due[:, 2].any()
  with pytest.raises(averaging.AveragingError, match='first'):
    population.Method('papa_all', every=3, first=-1)
