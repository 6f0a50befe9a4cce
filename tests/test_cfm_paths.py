"""Closed-form checks of every probability path, on odd shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfm import methods
from cfm import paths

SHAPE = (7, 3, 5)  # (batch, *dims), odd and distinct.


def _inputs(seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  x0 = jax.random.normal(keys[0], SHAPE)
  x1 = jax.random.normal(keys[1], SHAPE) + 2.0
  t = jax.random.uniform(keys[2], SHAPE[:1], minval=0.05, maxval=0.95)
  eps = jax.random.normal(keys[3], SHAPE)
  return x0, x1, t, eps


def _col(t):
  return np.asarray(t)[:, None, None]


def test_linear_path_closed_form():
  x0, x1, t, eps = _inputs()
  path = paths.LinearPath(sigma=0.3)
  x_t = path.sample_xt(x0, x1, t, eps)
  expected = _col(t) * x1 + (1 - _col(t)) * x0 + 0.3 * eps
  np.testing.assert_allclose(x_t, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(path.u_t(x0, x1, t, x_t), x1 - x0, rtol=1e-6)


def test_brownian_bridge_closed_form():
  x0, x1, t, eps = _inputs(1)
  sigma = 0.7
  path = paths.BrownianBridgePath(sigma)
  s = sigma * np.sqrt(np.asarray(t) * (1 - np.asarray(t)))
  np.testing.assert_allclose(path.sigma_t(t), s, rtol=1e-6)

  x_t = path.sample_xt(x0, x1, t, eps)
  mu = _col(t) * x1 + (1 - _col(t)) * x0
  np.testing.assert_allclose(x_t, mu + s[:, None, None] * eps, rtol=1e-5,
                             atol=1e-6)
  coefficient = (1 - 2 * _col(t)) / (2 * _col(t) * (1 - _col(t)))
  expected_u = coefficient * (x_t - mu) + x1 - x0
  np.testing.assert_allclose(path.u_t(x0, x1, t, x_t), expected_u,
                             rtol=1e-4, atol=1e-5)


def test_bridge_vector_field_is_time_derivative_of_the_sample():
  """u_t = d/dt x_t along a fixed (x0, x1, eps), checked by jax.jvp."""
  x0, x1, t, eps = _inputs(2)
  path = paths.BrownianBridgePath(0.5)
  x_t, dx_dt = jax.jvp(lambda s: path.sample_xt(x0, x1, s, eps), (t,),
                       (jnp.ones_like(t),))
  np.testing.assert_allclose(path.u_t(x0, x1, t, x_t), dx_dt, rtol=1e-3,
                             atol=1e-4)


@pytest.mark.parametrize('path', [
    paths.LinearPath(0.0), paths.TargetPath(0.05),
    paths.VariancePreservingPath(0.0)])
def test_vector_field_is_time_derivative_of_the_sample(path):
  x0, x1, t, eps = _inputs(3)
  x_t, dx_dt = jax.jvp(lambda s: path.sample_xt(x0, x1, s, eps), (t,),
                       (jnp.ones_like(t),))
  np.testing.assert_allclose(path.u_t(x0, x1, t, x_t), dx_dt, rtol=1e-4,
                             atol=1e-5)


def test_target_path_closed_form():
  x0, x1, t, _ = _inputs(4)
  sigma = 0.1
  path = paths.TargetPath(sigma)
  x_t = path.sample_xt(x0, x1, t, None)
  s = 1 - (1 - sigma) * _col(t)
  np.testing.assert_allclose(x_t, _col(t) * x1 + s * x0, rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_allclose(path.u_t(x0, x1, t, x_t),
                             (x1 - (1 - sigma) * x_t) / s, rtol=1e-5)


def test_vp_path_closed_form():
  x0, x1, t, eps = _inputs(5)
  path = paths.VariancePreservingPath(0.0)
  a = np.pi / 2 * _col(t)
  np.testing.assert_allclose(path.sample_xt(x0, x1, t, eps),
                             np.cos(a) * x0 + np.sin(a) * x1, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(
      path.u_t(x0, x1, t, None),
      np.pi / 2 * (np.cos(a) * x1 - np.sin(a) * x0), rtol=1e-5, atol=1e-6)


def test_sbcfm_rejects_non_positive_sigma():
  for sigma in (0.0, -0.5):
    with pytest.raises(ValueError, match='sigma > 0'):
      methods.make_matcher('sbcfm', sigma)


def test_target_fm_rejects_non_gaussian_source():
  with pytest.raises(ValueError, match='standard normal source'):
    methods.make_matcher('target', 0.1, source='8gaussians')


def test_unknown_method_is_named():
  with pytest.raises(ValueError, match="'fm9'"):
    methods.make_matcher('fm9', 0.1)


def test_sf2m_score_target_matches_the_path_score():
  """With a perfect score head the SF2M score loss is zero.

  The score of N(mu_t, sigma_t^2) at x_t is -eps / sigma_t; the head learns
  sigma^2 / 2 times it, so lambda(t) s + eps = 0.
  """
  x0, x1, _, _ = _inputs(6)
  n = SHAPE[0]
  matcher = methods.make_matcher('sf2m', 0.8)
  path = matcher.path

  def perfect(params, t_, x_, y_):
    del params, t_, x_, y_
    return jnp.concatenate([u_t, score], axis=1)

  # Reproduce the loss's own draws of t and eps from its key.
  key = jax.random.PRNGKey(9)
  key_t, key_eps = jax.random.split(key)
  t = jax.random.uniform(key_t, (n,))
  eps = jax.random.normal(key_eps, SHAPE)
  x_t = path.sample_xt(x0, x1, t, eps)
  u_t = path.u_t(x0, x1, t, x_t).reshape(n, -1)
  score = (-(0.8 ** 2) / 2 * eps / path.sigma_t(t)[:, None, None]).reshape(
      n, -1)
  loss, parts = matcher.regression_loss(
      perfect, None, methods.Pairs(x0, x1), key)
  assert float(parts['score_loss']) < 1e-6
  assert float(parts['flow_loss']) < 1e-6
  assert float(loss) < 1e-6
