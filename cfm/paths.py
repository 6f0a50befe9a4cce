"""Conditional probability paths p_t(x | x0, x1) = N(mu_t, sigma_t^2 I).

Each path gives, in closed form, the mean mu_t, the standard deviation
sigma_t, a sample x_t = mu_t + sigma_t * eps, and the conditional vector field
u_t(x_t | x0, x1) that a flow-matching model regresses onto (Tong et al.,
"Improving and generalizing flow-based generative models with minibatch
optimal transport", TMLR 2024, Sections 3-4).

Shapes: x0, x1, eps and x_t are (batch, *dims); t is (batch,) in [0, 1].
"""

import dataclasses
import math

import jax
import jax.numpy as jnp


def _expand(t: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes t (batch,) to broadcast against x (batch, *dims)."""
  t = jnp.asarray(t, x.dtype)
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


@dataclasses.dataclass(frozen=True)
class LinearPath:
  """Straight line with constant noise: mu_t = t x1 + (1 - t) x0, sigma_t = sigma.

  The path of I-CFM (independent coupling) and OT-CFM (minibatch OT
  coupling); u_t = x1 - x0 does not depend on x_t.
  """
  sigma: float = 0.0

  def mu_t(self, x0, x1, t):
    t = _expand(t, x0)
    return t * x1 + (1 - t) * x0

  def sigma_t(self, t):
    return jnp.full_like(jnp.asarray(t, jnp.float32), self.sigma)

  def sample_xt(self, x0, x1, t, eps):
    return self.mu_t(x0, x1, t) + _expand(self.sigma_t(t), x0) * eps

  def u_t(self, x0, x1, t, x_t):
    del t, x_t
    return x1 - x0


@dataclasses.dataclass(frozen=True)
class BrownianBridgePath(LinearPath):
  """Brownian bridge of SB-CFM: sigma_t = sigma sqrt(t (1 - t)).

  u_t = (1 - 2t) / (2 t (1 - t)) (x_t - mu_t) + (x1 - x0). The coefficient
  is singular at t = 0 and 1, where x_t - mu_t = 0; a small constant in the
  denominator keeps it finite there, as in the reference code.
  """
  sigma: float = 1.0

  def __post_init__(self):
    if not self.sigma > 0:
      raise ValueError(
          f'SB-CFM needs sigma > 0 (got {self.sigma}); its Brownian bridge '
          'and entropic coupling (epsilon = 2 sigma^2) vanish at 0. Set '
          '--config.sigma to a positive value.')

  def sigma_t(self, t):
    t = jnp.asarray(t, jnp.float32)
    return self.sigma * jnp.sqrt(t * (1 - t))

  def u_t(self, x0, x1, t, x_t):
    t_ = _expand(t, x0)
    coefficient = (1 - 2 * t_) / (2 * t_ * (1 - t_) + 1e-8)
    return coefficient * (x_t - self.mu_t(x0, x1, t)) + (x1 - x0)


@dataclasses.dataclass(frozen=True)
class TargetPath:
  """Lipman et al. (2023) OT path from a standard normal source.

  mu_t = t x1, sigma_t = 1 - (1 - sigma) t, and
  u_t = (x1 - (1 - sigma) x_t) / (1 - (1 - sigma) t). The source sample x0
  plays the role of eps, so the source must be N(0, I).
  """
  sigma: float = 0.0

  def mu_t(self, x0, x1, t):
    del x0
    return _expand(t, x1) * x1

  def sigma_t(self, t):
    return 1 - (1 - self.sigma) * jnp.asarray(t, jnp.float32)

  def sample_xt(self, x0, x1, t, eps):
    del eps  # The noise is x0 itself.
    return self.mu_t(x0, x1, t) + _expand(self.sigma_t(t), x1) * x0

  def u_t(self, x0, x1, t, x_t):
    del x0
    t = _expand(t, x1)
    return (x1 - (1 - self.sigma) * x_t) / (1 - (1 - self.sigma) * t)


@dataclasses.dataclass(frozen=True)
class VariancePreservingPath:
  """Trigonometric interpolant of Albergo & Vanden-Eijnden (2023).

  mu_t = cos(pi t / 2) x0 + sin(pi t / 2) x1, constant sigma, and
  u_t = pi / 2 (cos(pi t / 2) x1 - sin(pi t / 2) x0).
  """
  sigma: float = 0.0

  def mu_t(self, x0, x1, t):
    t = _expand(t, x0)
    return jnp.cos(math.pi / 2 * t) * x0 + jnp.sin(math.pi / 2 * t) * x1

  def sigma_t(self, t):
    return jnp.full_like(jnp.asarray(t, jnp.float32), self.sigma)

  def sample_xt(self, x0, x1, t, eps):
    return self.mu_t(x0, x1, t) + _expand(self.sigma_t(t), x0) * eps

  def u_t(self, x0, x1, t, x_t):
    del x_t
    t = _expand(t, x0)
    return math.pi / 2 * (jnp.cos(math.pi / 2 * t) * x1
                          - jnp.sin(math.pi / 2 * t) * x0)
