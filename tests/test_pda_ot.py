"""Minibatch OT losses against scipy's linprog and float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from pda import ar
from pda import ot_losses

# Jitted once per shape: eager calls would compile every solver op apart.
partial_plan = jax.jit(ot_losses.partial_plan)
unbalanced_plan = jax.jit(ot_losses.unbalanced_plan,
                          static_argnames=('epsilon', 'tau'))


def _exact_partial(M, a, b, mass):
  n, m = M.shape
  a_ub = np.vstack([np.kron(np.eye(n), np.ones(m)),
                    np.kron(np.ones(n), np.eye(m))])
  res = optimize.linprog(M.ravel(), A_ub=a_ub, b_ub=np.concatenate([a, b]),
                         A_eq=np.ones((1, n * m)), b_eq=[mass],
                         bounds=(0, None))
  return res.fun


@pytest.mark.parametrize('mass', [0.15, 0.4, 0.9])
def test_partial_plan_matches_linprog_at_small_epsilon(mass):
  rng = np.random.default_rng(0)
  n, m = 7, 5
  M = rng.uniform(0.0, 3.0, (n, m)).astype(np.float32)
  a, b = np.full(n, 1 / n, np.float32), np.full(m, 1 / m, np.float32)
  plan = np.asarray(partial_plan(jnp.asarray(M), a, b, mass,
                                           0.005))
  assert plan.sum() == pytest.approx(mass, abs=2e-3)
  assert np.all(plan.sum(1) <= a + 1e-3) and np.all(plan.sum(0) <= b + 1e-3)
  assert np.sum(plan * M) == pytest.approx(_exact_partial(M, a, b, mass),
                                           abs=2e-3)


def test_partial_plan_hand_case_and_grid_epsilons():
  # Mass 0.5 between halves: all of it on the one zero-cost entry.
  M = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  half = jnp.array([0.5, 0.5])
  plan = partial_plan(M, half, half, 0.5, 0.01)
  np.testing.assert_allclose(plan, [[0.5, 0.0], [0.0, 0.0]], atol=1e-3)
  # Float32 stability at the benchmark's epsilons: finite, exact mass.
  rng = np.random.default_rng(2)
  M = jnp.asarray(rng.uniform(0, 30, (13, 11)), jnp.float32)
  for eps in (0.5, 1.0, 1.5):
    plan = partial_plan(M, jnp.full(13, 1 / 13), jnp.full(11, 1 / 11), 0.3,
                        eps)
    assert np.isfinite(plan).all()
    assert float(plan.sum()) == pytest.approx(0.3, abs=1e-3)


def _uot_reference(M, a, b, reg, reg_m, iterations=20000):
  K = np.exp(-M / reg)
  u, v = np.ones(len(a)), np.ones(len(b))
  power = reg_m / (reg_m + reg)
  for _ in range(iterations):
    u = (a / (K @ v)) ** power
    v = (b / (K.T @ u)) ** power
  return u[:, None] * K * v[None, :]


@pytest.mark.parametrize('eps,tau', [(0.5, 0.1), (0.05, 0.01)])
def test_unbalanced_plan_matches_float64_scaling(eps, tau):
  rng = np.random.default_rng(1)
  M = rng.uniform(0.0, 1.0, (9, 6))
  a, b = np.full(9, 1 / 9), np.full(6, 1 / 6)
  plan = unbalanced_plan(jnp.asarray(M, jnp.float32), a, b, epsilon=eps,
                         tau=tau)
  np.testing.assert_allclose(plan, _uot_reference(M, a, b, eps, tau),
                             atol=1e-5)


def test_losses_flow_through_cost_only():
  rng = np.random.default_rng(3)
  M = jnp.asarray(rng.uniform(0, 2, (5, 4)), jnp.float32)
  grad = jax.jit(jax.grad(lambda M: ot_losses.mpot_loss(
      M, epsilon=0.5, mass=0.3, eta_3=2.0)))(M)
  plan = partial_plan(M, jnp.full(5, 0.2), jnp.full(4, 0.25), 0.3, 0.5)
  np.testing.assert_allclose(grad, 2.0 * plan, atol=1e-6)
  grad = jax.jit(jax.grad(lambda M: ot_losses.jumbot_loss(
      M, epsilon=0.01, tau=0.1, eta_3=1.0)))(M)
  plan = unbalanced_plan(M, jnp.full(5, 0.2), jnp.full(4, 0.25),
                         epsilon=0.01, tau=0.1)
  np.testing.assert_allclose(grad, plan, atol=1e-6)


def _bregman_partial(M, a, b, mass, eps, iterations=3000):
  # The benchmark's entropic partial OT (POT's entropic_partial_wasserstein):
  # Dykstra's KL projections onto {P 1 <= a}, {P^T 1 <= b}, {sum P = mass},
  # entropy on the real plan only. Float64, written from the algorithm.
  P = np.exp(-M / eps)
  P *= mass / P.sum()
  q_rows, q_cols = np.ones_like(P), np.ones_like(P)
  for _ in range(iterations):
    before = P * q_rows
    P = before * np.minimum(1.0, a / before.sum(1))[:, None]
    q_rows = before / P
    before = P * q_cols
    P = before * np.minimum(1.0, b / before.sum(0))[None, :]
    q_cols = before / P
    P *= mass / P.sum()
  return P


@pytest.mark.parametrize('scale,eps,bound', [(1.0, 0.5, 0.03),
                                             (1.0, 1.5, 0.01),
                                             (10.0, 0.5, 0.15),
                                             (10.0, 1.5, 0.09)])
def test_partial_plan_near_the_benchmarks_bregman_plan(scale, eps, bound):
  # The dummy-point plan differs from POT's by a few percent of the mass at
  # the grid's epsilons, more on larger costs (module docstring).
  M = np.random.default_rng(5).uniform(0, 1, (13, 11)) * scale
  a, b = np.full(13, 1 / 13), np.full(11, 1 / 11)
  plan = np.asarray(partial_plan(jnp.asarray(M, jnp.float32), a, b, 0.3, eps),
                    np.float64)
  reference = _bregman_partial(M, a, b, 0.3, eps)
  assert reference.sum() == pytest.approx(0.3) and plan.sum() == (
      pytest.approx(0.3, abs=1e-4))
  assert 0.5 * np.abs(plan - reference).sum() / 0.3 < bound


def test_joint_cost_and_mass_schedule():
  g_s = jnp.array([[0.0, 0.0], [1.0, 0.0]])
  g_t = jnp.array([[0.0, 2.0]])
  logits_t = jnp.log(jnp.array([[0.25, 0.75]]))
  M = ot_losses.joint_cost(g_s, jnp.array([0, 1]), g_t, logits_t, 2.0, 3.0)
  np.testing.assert_allclose(M[:, 0], [2 * 4 - 3 * np.log(0.25),
                                       2 * 5 - 3 * np.log(0.75)], rtol=1e-5)
  assert float(ot_losses.mpot_mass(0, 100, 0.3)) == pytest.approx(0.01)
  assert float(ot_losses.mpot_mass(25, 100, 0.3)) == pytest.approx(0.155)
  assert float(ot_losses.mpot_mass(80, 100, 0.3)) == pytest.approx(0.3)


@pytest.mark.parametrize('n,rho', [(9, 0.8), (13, 3.0), (7, 0.05),
                                   (11, 20.0)])
def test_ar_weights_match_scipy(n, rho):
  # Small and large radii: no weight at 0, and most weights at 0.
  d = np.random.default_rng(n).normal(size=n)
  w = np.asarray(ar.solve_weights(jnp.asarray(d, jnp.float32), rho))
  res = optimize.minimize(
      lambda w: w @ d, np.ones(n), method='SLSQP', bounds=[(0, None)] * n,
      constraints=[{'type': 'eq', 'fun': lambda w: w.sum() - n},
                   {'type': 'ineq',
                    'fun': lambda w: rho * n - np.sum((w - 1) ** 2)}])
  np.testing.assert_allclose(w, res.x, atol=2e-3)
  assert w @ d == pytest.approx(res.fun, abs=1e-3)
