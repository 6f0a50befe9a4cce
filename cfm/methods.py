"""Flow-matching methods: a path, a coupling and the regression loss.

| method | path                  | coupling                        |
|--------|-----------------------|---------------------------------|
| icfm   | LinearPath(sigma)     | independent                     |
| otcfm  | LinearPath(sigma)     | exact OT                        |
| sbcfm  | BrownianBridgePath    | entropic OT, epsilon = 2 sigma^2 |
| target | TargetPath (Lipman)   | independent, N(0, I) source     |
| vp     | VariancePreservingPath | independent                    |
| sf2m   | BrownianBridgePath + score | entropic OT, epsilon = 2 sigma^2 |

The loss is E_t,pi ||v_theta(t, x_t) - u_t(x_t | x0, x1)||^2, plus for SF2M
the score term E ||lambda(t) s_theta(t, x_t) + eps||^2 with
lambda(t) = 2 sigma_t / sigma^2, so s_theta learns (sigma^2 / 2) grad log p_t,
the correction the SDE drift needs.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from cfm import couplings
from cfm import paths

METHODS = ('icfm', 'otcfm', 'sbcfm', 'target', 'vp', 'sf2m')


@dataclasses.dataclass(frozen=True)
class Pairs:
  """A minibatch before coupling.

  Attributes:
    x0: (n, *dims) source samples.
    x1: (n, *dims) target samples.
    y1: (n,) int target labels, or None.
    perm: (n,) exact OT permutation computed ahead on the host, or None.
  """
  x0: jax.Array
  x1: jax.Array
  y1: jax.Array | None = None
  perm: jax.Array | None = None


jax.tree_util.register_dataclass(
    Pairs, data_fields=['x0', 'x1', 'y1', 'perm'], meta_fields=[])


@dataclasses.dataclass(frozen=True)
class FlowMatcher:
  """A method's path, coupling and loss weights.

  Attributes:
    path: a probability path from `cfm.paths`.
    coupling: one of `couplings.COUPLINGS`.
    epsilon: entropic regularisation (entropic / unbalanced / partial).
    marginal_penalty: KL weight on the marginals (unbalanced).
    mass: transported mass (partial).
    learn_score: also learn the score (SF2M).
  """
  path: Any
  coupling: str = 'independent'
  epsilon: float = 0.05
  marginal_penalty: float = 1.0
  mass: float = 0.9
  learn_score: bool = False

  @property
  def needs_host_permutation(self) -> bool:
    return self.coupling in ('exact', 'exact_resample')

  def couple(self, key: jax.Array, pairs: Pairs) -> Pairs:
    """Applies the coupling: returns x0, x1 (and labels) re-paired."""
    n = pairs.x0.shape[0]
    if self.coupling == 'independent':
      return pairs
    if self.needs_host_permutation:
      perm = pairs.perm
      if perm is None:
        perm = couplings.exact_permutation(pairs.x0, pairs.x1)
      if self.coupling == 'exact':
        i, j = jnp.arange(n), perm
      else:
        i, j = couplings.resample_exact(key, perm, n)
    else:
      if self.coupling == 'entropic':
        plan = couplings.entropic_plan(pairs.x0, pairs.x1, self.epsilon)
      elif self.coupling == 'unbalanced':
        plan = couplings.unbalanced_plan(pairs.x0, pairs.x1, self.epsilon,
                                         self.marginal_penalty)
      else:
        plan = couplings.partial_plan(pairs.x0, pairs.x1, self.epsilon,
                                      self.mass)
      # The plan picks pairs; no gradient flows through it.
      i, j = couplings.sample_from_plan(key, jax.lax.stop_gradient(plan), n)
    y1 = None if pairs.y1 is None else pairs.y1[j]
    return Pairs(pairs.x0[i], pairs.x1[j], y1, None)

  def loss(self, apply_fn: Callable, params, pairs: Pairs,
           key: jax.Array) -> tuple[jax.Array, dict]:
    """Couples the minibatch, then takes the regression loss on it."""
    key_couple, key_loss = jax.random.split(key)
    return self.regression_loss(apply_fn, params,
                                self.couple(key_couple, pairs), key_loss)

  def regression_loss(self, apply_fn: Callable, params, pairs: Pairs,
                      key: jax.Array) -> tuple[jax.Array, dict]:
    """The flow-matching (and score) regression loss on coupled pairs.

    Args:
      apply_fn: `(params, t, x_t, y) -> (n, d)`, or (n, 2d) with a score
        head; x_t is flattened to (n, d).
      params: model parameters.
      pairs: the minibatch, already coupled.
      key: randomness of t and eps.
    """
    key_t, key_eps = jax.random.split(key)
    x0, x1 = pairs.x0, pairs.x1
    n = x0.shape[0]

    t = jax.random.uniform(key_t, (n,), x0.dtype)
    eps = jax.random.normal(key_eps, x0.shape, x0.dtype)
    x_t = self.path.sample_xt(x0, x1, t, eps)
    u_t = self.path.u_t(x0, x1, t, x_t)

    out = apply_fn(params, t, x_t.reshape(n, -1), pairs.y1)
    d = u_t.reshape(n, -1).shape[1]
    flow_loss = jnp.mean(jnp.sum((out[:, :d] - u_t.reshape(n, -1)) ** 2, -1))
    if not self.learn_score:
      return flow_loss, {'flow_loss': flow_loss}

    lambda_t = 2 * self.path.sigma_t(t) / self.path.sigma ** 2
    score_residual = lambda_t[:, None] * out[:, d:] + eps.reshape(n, -1)
    score_loss = jnp.mean(jnp.sum(score_residual ** 2, -1))
    return flow_loss + score_loss, {'flow_loss': flow_loss,
                                    'score_loss': score_loss}


def make_matcher(method: str, sigma: float, *, coupling: str = '',
                 source: str = 'normal', epsilon: float | None = None,
                 marginal_penalty: float = 1.0,
                 mass: float = 0.9) -> FlowMatcher:
  """The FlowMatcher of a named method.

  Args:
    method: one of METHODS.
    sigma: the path's noise level.
    coupling: overrides the method's default coupling when not ''.
    source: name of the source distribution; target FM needs 'normal'.
    epsilon: entropic regularisation; SB-CFM and SF2M default to 2 sigma^2.
    marginal_penalty, mass: unbalanced and partial OT settings.
  """
  if method not in METHODS:
    raise ValueError(f'Unknown method {method!r}; choose one of '
                     f'{list(METHODS)}.')
  bridge = method in ('sbcfm', 'sf2m')
  if sigma < 0 and not bridge:
    raise ValueError(f'sigma={sigma} must be >= 0.')
  if coupling and coupling not in couplings.COUPLINGS:
    raise ValueError(f'Unknown coupling {coupling!r}; choose one of '
                     f'{list(couplings.COUPLINGS)}.')

  if method in ('icfm', 'otcfm'):
    path = paths.LinearPath(sigma)
  elif bridge:
    path = paths.BrownianBridgePath(sigma)
  elif method == 'target':
    if source != 'normal':
      raise ValueError(
          f'Target FM (Lipman et al.) needs a standard normal source, got '
          f'source={source!r}; use icfm or otcfm for other sources.')
    path = paths.TargetPath(sigma)
  else:
    path = paths.VariancePreservingPath(sigma)

  default_coupling = {'otcfm': 'exact', 'sbcfm': 'entropic',
                      'sf2m': 'entropic'}.get(method, 'independent')
  if epsilon is None:
    epsilon = 2 * sigma ** 2 if bridge else 0.05
  return FlowMatcher(path=path, coupling=coupling or default_coupling,
                     epsilon=epsilon, marginal_penalty=marginal_penalty,
                     mass=mass, learn_score=method == 'sf2m')
