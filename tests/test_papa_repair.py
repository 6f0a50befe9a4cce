"""REPAIR restores the hidden-unit statistics that weight averaging loses."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common import loop
from common import models as common_models
from papa import averaging
from papa import models
from papa import population
from papa import regularisers
from papa import repair

from tests.test_papa_population import _data


def _members(model, x, P, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), P)
  variables = jax.vmap(lambda k: model.init(k, x))(keys)
  return variables['params'], {}


def _stats(model, params, x):
  return [(m, sd) for _, m, sd in
          repair.hidden_unit_statistics(model, params, {}, x)]


@pytest.mark.parametrize('model,shape', [
    (common_models.MLP(5, widths=(16, 12)), (64, 7)),
    (common_models.CNN(5, channels=(4, 6), hidden=8, conv='patches'),
     (32, 10, 1)),
    (common_models.CNN(5, channels=(4, 6), hidden=8, conv='lax'),
     (16, 8, 8, 2)),
])
def test_repaired_average_has_the_mixed_member_statistics(model, shape):
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  P = 4
  params, state = _members(model, x, P)
  for mixing in (averaging.mean_mixing(P),
                 averaging.partner_mixing(jnp.asarray([2, 3, 0, 1]))):
    averaged = jax.tree.map(lambda w: jnp.einsum('ij,j...->i...', mixing, w),
                            params)
    # Averaging independent initialisations shrinks the hidden units.
    member_sd = jax.vmap(lambda p: _stats(model, p, x)[0][1])(params)
    averaged_sd = jax.vmap(lambda p: _stats(model, p, x)[0][1])(averaged)
    assert float(averaged_sd.mean()) < 0.9 * float(member_sd.mean())

    fixed = repair.repair_population(model, params, state, averaged, state,
                                     mixing, x)
    member_stats = jax.vmap(lambda p: _stats(model, p, x))(params)
    fixed_stats = jax.vmap(lambda p: _stats(model, p, x))(fixed)
    assert len(fixed_stats) == (2 if isinstance(model, common_models.MLP)
                                else 3)  # Hidden layers, not the logits.
    for (mean, sd), (got_mean, got_sd) in zip(member_stats, fixed_stats):
      np.testing.assert_allclose(got_mean, mixing @ mean, atol=1e-4)
      # Not exact for units of tiny variance: like BatchNorm, the sd carries
      # an epsilon (0.2% off for a unit of sd 0.05).
      np.testing.assert_allclose(got_sd, mixing @ sd, rtol=5e-3)


def test_resnet_has_nothing_to_repair():
  # Its convolutions feed BatchNorm (no bias); its one Dense is the logits.
  model = models.ResNet20(3, width=4)
  x = jnp.ones((2, 8, 8, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  state = {k: v for k, v in variables.items() if k != 'params'}
  assert repair.hidden_unit_statistics(model, variables['params'], state,
                                       x) == []


def test_repairing_identical_members_changes_nothing():
  model = common_models.MLP(3, widths=(8,))
  x = jax.random.normal(jax.random.PRNGKey(2), (40, 5))
  params, state = _members(model, x, 1)
  params = jax.tree.map(lambda w: jnp.repeat(w, 3, axis=0), params)
  fixed = repair.repair_population(model, params, state, params, state,
                                   averaging.mean_mixing(3), x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               fixed, params)


def _population(methods, seeds):
  return population.Population(
      common_models.MLP(4, widths=(8,)), _data(), 4, member_seeds=seeds,
      group_size=3, optimizer=optax.adam(1e-2),
      learning_rate_fn=optax.constant_schedule(1e-2), batch_size=7,
      hyper=regularisers.member_combinations(regularisers.DEFAULT_GRID,
                                             seeds),
      methods=methods, repair_size=32)


def test_population_repairs_only_the_groups_that_averaged():
  seeds = list(range(3)) * 3
  with_repair = _population([population.Method(),
                             population.Method('papa_all', every=2,
                                               repair=True),
                             population.Method('papa_2', every=3,
                                               repair=True)], seeds)
  without = _population([population.Method(),
                         population.Method('papa_all', every=2),
                         population.Method('papa_2', every=3)], seeds)
  final = {}
  for name, pop in (('with', with_repair), ('without', without)):
    final[name] = loop.train(pop.init(), pop.step_fn, num_steps=4, seed=5,
                             workdir=None, batch_fn=pop.batch_fn,
                             log_every=2, quiet=True).state.params
  kernel = lambda name: np.asarray(final[name]['Dense_0']['kernel'])
  # Independent members are untouched by the other groups' repairs.
  np.testing.assert_array_equal(kernel('with')[:3], kernel('without')[:3])
  # PAPA-all members are one model after its step-4 averaging, and REPAIR
  # changed it.
  np.testing.assert_allclose(kernel('with')[3], kernel('with')[5], atol=1e-6)
  assert not np.allclose(kernel('with')[3:6], kernel('without')[3:6])

  # The repaired PAPA-all model has the mean statistics of its members just
  # before the averaging; replay those steps to check.
  pop = with_repair
  state = loop.train(pop.init(), pop.step_fn, num_steps=3, seed=5,
                     workdir=None, batch_fn=pop.batch_fn, log_every=3,
                     quiet=True).state
  step_key = jax.random.fold_in(jax.random.PRNGKey(5), 3)
  batch = pop.batch_fn(state.step)
  keys = jax.vmap(lambda s: jax.random.fold_in(step_key, s))(
      pop.member_seeds)
  members, _ = jax.vmap(pop.member_step)(
      state.replace(step=jnp.broadcast_to(state.step, (pop.N,))), batch, keys)
  group = jax.tree.map(lambda w: w[3:6], members.params)
  x = pop.repair_x
  stats = lambda p: repair.hidden_unit_statistics(pop.model, p, {}, x)[0][1:]
  target_mean, target_sd = (v.mean(0) for v in jax.vmap(stats)(group))
  got_mean, got_sd = stats(jax.tree.map(lambda w: w[3], final['with']))
  np.testing.assert_allclose(got_mean, target_mean, atol=1e-4)
  np.testing.assert_allclose(got_sd, target_sd, rtol=5e-3)


def test_repair_only_for_whole_averagings():
  with pytest.raises(averaging.AveragingError, match='repair'):
    population.Method('papa', every=2, repair=True)
  with pytest.raises(ValueError, match='repair_size'):
    population.Population(
        common_models.MLP(4, widths=(8,)), _data(), 4, member_seeds=[0, 1],
        group_size=2, optimizer=optax.adam(1e-2),
        learning_rate_fn=optax.constant_schedule(1e-2), batch_size=7,
        hyper=regularisers.member_combinations({}, [0, 1]), repair_size=0)
