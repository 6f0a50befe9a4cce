"""Couplings against scipy, Sinkhorn marginals, W2 and sampling checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.spatial

from cfm import couplings
from cfm import evaluation
from cfm import methods
from cfm import sampling


def _clouds(n=29, m=29, d=3, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)).astype(np.float32),
          (rng.normal(size=(m, d)) + 1.5).astype(np.float32))


def test_exact_permutation_matches_linear_sum_assignment():
  x0, x1 = _clouds()
  cost = scipy.spatial.distance.cdist(x0, x1, 'sqeuclidean')
  rows, cols = scipy.optimize.linear_sum_assignment(cost)

  perm = np.asarray(couplings.exact_permutation(jnp.asarray(x0),
                                                jnp.asarray(x1)))
  assert sorted(perm.tolist()) == list(range(len(x0)))  # nothing dropped
  np.testing.assert_allclose(cost[np.arange(len(x0)), perm].sum(),
                             cost[rows, cols].sum(), rtol=1e-9)


def test_exact_coupling_keeps_every_point_and_label():
  x0, x1 = _clouds(17, 17, 2)
  y1 = np.arange(17, dtype=np.int32)
  matcher = methods.make_matcher('otcfm', 0.0)
  coupled = matcher.couple(jax.random.PRNGKey(0),
                           methods.Pairs(jnp.asarray(x0), jnp.asarray(x1),
                                         jnp.asarray(y1)))
  np.testing.assert_array_equal(coupled.x0, x0)
  assert sorted(np.asarray(coupled.y1).tolist()) == list(range(17))
  # Labels travel with their points.
  np.testing.assert_array_equal(coupled.x1, x1[np.asarray(coupled.y1)])


def test_exact_resample_draws_only_pairs_of_the_plan():
  x0, x1 = _clouds(13, 13, 2)
  perm = couplings.exact_permutation_host(x0, x1)
  i, j = couplings.resample_exact(jax.random.PRNGKey(3), jnp.asarray(perm),
                                  500)
  np.testing.assert_array_equal(np.asarray(j), perm[np.asarray(i)])
  assert len(set(np.asarray(i).tolist())) == 13  # with replacement, all hit


def test_sinkhorn_plan_has_uniform_marginals():
  x0, x1 = _clouds(23, 31)
  plan = np.asarray(couplings.entropic_plan(x0, x1, epsilon=0.5))
  np.testing.assert_allclose(plan.sum(1), np.full(23, 1 / 23), atol=2e-4)
  np.testing.assert_allclose(plan.sum(0), np.full(31, 1 / 31), atol=2e-4)


def test_entropic_plan_tends_to_exact_plan_for_small_epsilon():
  x0, x1 = _clouds(11, 11, 2, seed=4)
  plan = np.asarray(couplings.entropic_plan(x0, x1, epsilon=0.01))
  perm = couplings.exact_permutation_host(x0, x1)
  np.testing.assert_array_equal(plan.argmax(1), perm)


def test_partial_plan_moves_the_requested_mass():
  x0, x1 = _clouds(19, 23)
  plan = np.asarray(couplings.partial_plan(x0, x1, epsilon=0.1, mass=0.6))
  assert plan.sum() == pytest.approx(0.6, abs=5e-3)
  assert np.all(plan.sum(1) <= 1 / 19 + 1e-3)
  assert np.all(plan.sum(0) <= 1 / 23 + 1e-3)


def test_unbalanced_plan_is_close_to_balanced_for_a_large_penalty():
  x0, x1 = _clouds(15, 15)
  balanced = np.asarray(couplings.entropic_plan(x0, x1, 0.5))
  relaxed = np.asarray(couplings.unbalanced_plan(x0, x1, 0.5, 1e4))
  np.testing.assert_allclose(relaxed, balanced, atol=5e-4)


def test_sample_from_plan_follows_the_plan():
  plan = jnp.array([[0.5, 0.0], [0.0, 0.25], [0.25, 0.0]])
  i, j = couplings.sample_from_plan(jax.random.PRNGKey(0), plan, 20000)
  pairs = np.asarray(i) * 2 + np.asarray(j)
  frequencies = np.bincount(pairs, minlength=6) / 20000
  np.testing.assert_allclose(frequencies, [0.5, 0, 0, 0.25, 0.25, 0],
                             atol=0.015)


def test_w2_between_gaussians_matches_the_closed_form():
  """W2(N(0, I), N(m, I)) = |m|; large samples of both approach it."""
  rng = np.random.default_rng(1)
  shift = np.array([3.0, -4.0])
  x = rng.normal(size=(1500, 2))
  y = rng.normal(size=(1500, 2)) + shift
  # Finite samples add a positive bias, small against |m| = 5.
  assert evaluation.wasserstein2(x, y) == pytest.approx(5.0, rel=0.02)
  assert evaluation.wasserstein2(x, x + shift) == pytest.approx(5.0,
                                                                rel=1e-9)


def test_w2_rejects_unequal_sizes():
  with pytest.raises(ValueError, match='equal-size'):
    evaluation.wasserstein2(np.zeros((3, 2)), np.zeros((4, 2)))


def test_npe_is_zero_for_the_optimal_flow():
  assert evaluation.normalized_path_energy(4.0, 2.0) == 0.0
  assert evaluation.normalized_path_energy(6.0, 2.0) == pytest.approx(0.5)


def test_ode_sampling_of_a_constant_field_forward_and_backward():
  x0 = jnp.zeros((5, 2))
  velocity = jnp.array([1.0, -2.0])
  field = lambda t, x: jnp.broadcast_to(velocity, x.shape)
  for solver in ('dopri5', 'euler'):
    forward = sampling.integrate_ode(field, x0, solver=solver, num_steps=7)
    np.testing.assert_allclose(forward.x, jnp.broadcast_to(velocity, (5, 2)),
                               atol=1e-5)
    # Path energy of a straight unit-time path is |v|^2 = 5.
    np.testing.assert_allclose(forward.path_energy, 5.0, rtol=1e-5)
    backward = sampling.integrate_ode(field, forward.x, t0=1.0, t1=0.0,
                                      solver=solver, num_steps=7)
    np.testing.assert_allclose(backward.x, x0, atol=1e-5)
    np.testing.assert_allclose(backward.path_energy, 5.0, rtol=1e-5)
  assert int(forward.nfe) == 7
  assert forward.trajectory.shape == (11, 5, 2)


def test_dopri5_nfe_counts_every_evaluation():
  calls = []

  def field(t, x):
    jax.debug.callback(lambda: calls.append(1))
    return -x * (1 + t)

  solution = sampling.integrate_ode(field, jnp.ones((3, 2)), rtol=1e-6,
                                    atol=1e-6)
  jax.effects_barrier()
  assert int(solution.nfe) == len(calls)


def test_sde_sampling_without_noise_is_the_ode():
  field = lambda t, x: -x
  x0 = jnp.ones((4, 2))
  sde = sampling.integrate_sde(field, x0, 0.0, jax.random.PRNGKey(0),
                               num_steps=50)
  ode = sampling.integrate_ode(field, x0, solver='euler', num_steps=50)
  np.testing.assert_allclose(sde.x, ode.x, rtol=1e-5)
  noisy = sampling.integrate_sde(field, x0, 1.0, jax.random.PRNGKey(0),
                                 num_steps=50)
  assert float(jnp.std(noisy.x)) > 0.1
