"""PAPA's averaging math on hand-computed trees, pairing law, bad settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from papa import averaging
from papa import population


def _tree():
  # Three members; leaf 'w' (3, 2) and leaf 'b' (3,).
  return {'w': jnp.asarray([[0., 3.], [3., 6.], [6., 0.]]),
          'b': jnp.asarray([1., 2., 6.])}


def test_population_mean_by_hand():
  mean = averaging.population_mean(_tree())
  np.testing.assert_allclose(mean['w'], [3., 3.])
  np.testing.assert_allclose(mean['b'], 3.)


def test_pull_by_hand():
  # a = 0.75: w_j <- 0.75 w_j + 0.25 mean.
  out = averaging.pull(_tree(), 0.75)
  np.testing.assert_allclose(out['w'], [[0.75, 3.], [3., 5.25], [5.25, 0.75]])
  np.testing.assert_allclose(out['b'], [1.5, 2.25, 5.25])


def test_pull_scaled_by_learning_rate_ratio():
  # Strength (1 - a) * lr_t / lr_0 = 0.5 * 0.5 = 0.25.
  out = averaging.pull(_tree(), 0.5, scale=0.5)
  np.testing.assert_allclose(out['b'], [1.5, 2.25, 5.25])
  np.testing.assert_allclose(averaging.pull(_tree(), 0.3, 0.0)['b'],
                             [1., 2., 6.])


def test_replace_with_mean_by_hand():
  out = averaging.replace_with_mean(_tree())
  np.testing.assert_allclose(out['w'], [[3., 3.]] * 3)
  np.testing.assert_allclose(out['b'], [3., 3., 3.])


def test_average_with_partners_by_hand():
  # Members 0 and 2 paired, member 1 left alone.
  out = averaging.average_with_partners(_tree(), jnp.asarray([2, 1, 0]))
  np.testing.assert_allclose(out['w'], [[3., 1.5], [3., 6.], [3., 1.5]])
  np.testing.assert_allclose(out['b'], [3.5, 2., 3.5])


def test_in_groups_averages_each_group_alone():
  tree = {'w': jnp.asarray([1., 3., 10., 20.])}
  out = averaging.in_groups(averaging.replace_with_mean, tree, 2)
  np.testing.assert_allclose(out['w'], [2., 2., 15., 15.])


@pytest.mark.parametrize('P', [5, 6])
def test_random_pairing_is_uniform(P):
  n = 6000
  keys = jax.random.split(jax.random.PRNGKey(3), n)
  partners = np.asarray(jax.vmap(
      lambda k: averaging.random_partners(k, P))(keys))

  # An involution: my partner's partner is me.
  np.testing.assert_array_equal(
      np.take_along_axis(partners, partners, axis=1),
      np.broadcast_to(np.arange(P), partners.shape))
  counts = np.zeros((P, P))
  for j in range(P):
    counts[j] = np.bincount(partners[:, j], minlength=P)

  # Odd P: every other member and "nobody" (self) each with chance 1/P.
  # Even P: every other member with chance 1/(P - 1), never self.
  for j in range(P):
    row = counts[j] if P % 2 else np.delete(counts[j], j)
    assert stats.chisquare(row).pvalue > 1e-3, row
  if P % 2 == 0:
    assert np.all(np.diag(counts) == 0)


@pytest.mark.parametrize('a', [1.0, -0.1, float('nan'), 2, 'x'])
def test_bad_a_is_refused(a):
  with pytest.raises(averaging.AveragingError, match='papa.a'):
    averaging.check_pull(a)
  with pytest.raises(averaging.AveragingError):
    population.Method('papa', every=3, a=a)


@pytest.mark.parametrize('every', [0, -2, 2.5, float('inf')])
@pytest.mark.parametrize('name', ['papa', 'papa_all', 'papa_2'])
def test_bad_k_or_T_is_refused(name, every):
  with pytest.raises(averaging.AveragingError, match='every'):
    population.Method(name, every=every)


@pytest.mark.parametrize('P', [0, 1, -3, 2.0, True])
def test_bad_population_size_is_refused(P):
  with pytest.raises(averaging.AveragingError, match='P='):
    averaging.check_population_size(P, minimum=2)


def test_unknown_method_is_refused():
  with pytest.raises(averaging.AveragingError, match='papa_all'):
    population.Method('papa3')
