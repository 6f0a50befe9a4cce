"""RSI, EB, gamma and eta* against closed forms and hand-worked values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geometry import quantities


def test_hand_worked_2d():
  # f(w) = (2 w1^2 + w2^2) / 2, minimum at 0; at w = (1, 1): g = (2, 1),
  # <g, d> = 3, ||d||^2 = 2, ||g||^2 = 5.
  w = {'w': jnp.array([1.0, 1.0])}
  g = {'w': jnp.array([2.0, 1.0])}
  w_star = {'w': jnp.zeros(2)}
  geo = quantities.measure(g, w, w_star)
  np.testing.assert_allclose(geo.rsi, 1.5, rtol=1e-6)
  np.testing.assert_allclose(geo.eb, np.sqrt(5 / 2), rtol=1e-6)
  np.testing.assert_allclose(geo.gamma, 3 / np.sqrt(10), rtol=1e-6)
  np.testing.assert_allclose(geo.eta_star, 0.6, rtol=1e-6)


def _quadratic(seed=0):
  """A pytree quadratic f(w) = (w - m)^T A (w - m) / 2, A diagonal > 0."""
  rng = np.random.default_rng(seed)
  shapes = {'a': (3, 5), 'b': (7,), 'c': (1, 1)}
  m = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  lam = {k: rng.uniform(0.5, 4.0, size=s).astype(np.float32)
         for k, s in shapes.items()}
  w = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  grad = jax.grad(lambda w: sum(
      jnp.sum(lam[k] * (w[k] - m[k]) ** 2) for k in w) / 2)
  return w, m, lam, grad


def test_quadratic_with_known_minimum():
  w, m, lam, grad = _quadratic()
  geo = quantities.measure(grad(w), w, m)

  # The reference: flattened float64 numpy, d = w - m, g = A d.
  d = np.concatenate([(w[k] - m[k]).astype(np.float64).ravel()
                      for k in sorted(w)])
  a = np.concatenate([lam[k].astype(np.float64).ravel() for k in sorted(w)])
  g = a * d
  np.testing.assert_allclose(geo.rsi, d @ (a * d) / (d @ d), rtol=1e-5)
  np.testing.assert_allclose(geo.eb, np.linalg.norm(g) / np.linalg.norm(d),
                             rtol=1e-5)
  np.testing.assert_allclose(
      geo.gamma, g @ d / np.linalg.norm(g) / np.linalg.norm(d), rtol=1e-5)
  np.testing.assert_allclose(geo.eta_star, g @ d / (g @ g), rtol=1e-5)

  # On a quadratic, RSI is a Rayleigh quotient: between the extreme
  # curvatures; gamma is positive (no wrong turns on a convex function).
  assert a.min() <= float(geo.rsi) <= a.max()
  assert 0 < float(geo.gamma) <= 1


def test_isotropic_quadratic():
  # A = c I: the gradient points straight at the minimum.
  c = 2.5
  w = {'x': jnp.arange(11.0).reshape(11) / 3}
  w_star = {'x': jnp.ones(11)}
  g = jax.tree.map(lambda a, b: c * (a - b), w, w_star)
  geo = quantities.measure(g, w, w_star)
  np.testing.assert_allclose([geo.rsi, geo.eb, geo.gamma, geo.eta_star],
                             [c, c, 1.0, 1 / c], rtol=1e-6)
  # eta* = 1 / c lands exactly on the minimum.
  np.testing.assert_allclose(geo.contraction(geo.eta_star), 0.0, atol=1e-6)


@pytest.mark.parametrize('eta', [0.013, 0.2, 0.71])
def test_sgd_contraction_identity(eta):
  w, m, _, grad = _quadratic(seed=3)
  g = grad(w)
  w_next = jax.tree.map(lambda a, b: a - eta * b, w, g)
  geo = quantities.measure(g, w, m)
  actual = (quantities.tree_norm(quantities.tree_sub(w_next, m)) ** 2
            / geo.dist ** 2)
  np.testing.assert_allclose(geo.contraction(eta), actual, rtol=1e-5)


def test_eta_star_minimises_the_contraction():
  w, m, _, grad = _quadratic(seed=5)
  geo = quantities.measure(grad(w), w, m)
  etas = np.linspace(0.0, 2 * float(geo.eta_star), 201)
  values = np.asarray([geo.contraction(e) for e in etas])
  assert abs(etas[np.argmin(values)] - float(geo.eta_star)) <= etas[1]


def test_pieces_broadcast_over_leading_axes():
  geo = quantities.Geometry(inner=jnp.array([[1.0, -2.0]]),
                            grad_norm=jnp.array([[2.0, 4.0]]),
                            dist=jnp.array([[1.0, 2.0]]))
  np.testing.assert_allclose(geo.gamma, [[0.5, -0.25]])
  np.testing.assert_allclose(geo.rsi, [[1.0, -0.5]])


def test_random_direction_norm_and_shape():
  like = {'a': jnp.zeros((4, 9)), 'b': jnp.zeros((13,))}
  d = quantities.random_direction(jax.random.PRNGKey(1), like, 3.0)
  assert jax.tree.structure(d) == jax.tree.structure(like)
  np.testing.assert_allclose(quantities.tree_norm(d), 3.0, rtol=1e-6)
  assert quantities.tree_size(like) == 49


def test_reference_kinds():
  w = {'a': jnp.array([3.0, 4.0])}
  point = quantities.Reference({'a': jnp.array([1.0, 1.0])})
  direction = quantities.Reference({'a': jnp.array([0.0, 2.0])},
                                   kind='direction')
  np.testing.assert_allclose(point.displacement(w)['a'], [2.0, 3.0])
  np.testing.assert_allclose(direction.displacement(w)['a'], [0.0, 2.0])
  with pytest.raises(ValueError, match="'point' or 'direction'"):
    quantities.Reference(w, kind='line')


def test_reference_of_another_shape_is_rejected():
  w = {'a': jnp.zeros((3, 5)), 'b': jnp.zeros(7)}
  g = jax.tree.map(jnp.ones_like, w)
  with pytest.raises(ValueError, match=r"shape \(5, 3\).*\['a'\]"):
    quantities.measure(g, w, {'a': jnp.zeros((5, 3)), 'b': jnp.zeros(7)})
  with pytest.raises(ValueError, match='pytree structure'):
    quantities.measure(g, w, {'a': jnp.zeros((3, 5))})
