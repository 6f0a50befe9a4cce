"""Minibatch couplings pi(x0, x1) for flow matching.

Every coupling here is with respect to the squared Euclidean cost between a
source minibatch x0 (n, d) and a target minibatch x1 (m, d).

* Exact OT. ott-jax solves entropic and unbalanced problems but has no exact
  solver for general point clouds, so the exact plan comes from scipy's
  `linear_sum_assignment` (a Jonker-Volgenant shortest-augmenting-path code,
  exact and the fastest assignment solver we have on CPU). For equal sizes
  and uniform weights the optimal plan is a permutation: `exact_permutation`
  returns it, so no point is duplicated or dropped. `resample_exact` draws
  pairs from that plan with replacement, which is what the reference
  PyTorch code does. Both run on any device: in jitted code the solver is
  reached through `jax.pure_callback`; the training loop instead calls it on
  the host ahead of the step (a coupling depends only on the data).
* Entropic, unbalanced and partial OT through ott-jax's Sinkhorn solver,
  in jitted code on any device. Pairs are then drawn from the plan.

Class labels travel with the indices: gather y0[i], y1[j] with the same
indices as x0[i], x1[j].
"""

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import geometry
from ott.geometry import pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn
import scipy.optimize

from common import ot

COUPLINGS = ('independent', 'exact', 'exact_resample', 'entropic',
             'unbalanced', 'partial')


def squared_distances(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
  """Cost matrix C_ij = ||x0_i - x1_j||^2, shape (n, m), in float64."""
  x0 = np.asarray(x0, np.float64).reshape(len(x0), -1)
  x1 = np.asarray(x1, np.float64).reshape(len(x1), -1)
  cost = (np.sum(x0 ** 2, 1)[:, None] + np.sum(x1 ** 2, 1)[None, :]
          - 2.0 * x0 @ x1.T)
  return np.maximum(cost, 0.0)


def exact_permutation_host(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
  """The exact OT permutation on the host: x0[i] is paired with x1[perm[i]].

  Args:
    x0: (n, *dims) source points.
    x1: (n, *dims) target points, same n.

  Returns:
    perm: (n,) int32 permutation minimising sum_i ||x0_i - x1_perm[i]||^2.
  """
  if len(x0) != len(x1):
    raise ValueError(f'The exact coupling pairs equal batches; got {len(x0)} '
                     f'source and {len(x1)} target points.')
  rows, cols = scipy.optimize.linear_sum_assignment(squared_distances(x0, x1))
  perm = np.empty(len(x0), np.int32)
  perm[rows] = cols
  return perm


def exact_permutation(x0: jax.Array, x1: jax.Array) -> jax.Array:
  """`exact_permutation_host` callable from jitted code on any device."""
  result = jax.ShapeDtypeStruct((x0.shape[0],), jnp.int32)
  return jax.pure_callback(exact_permutation_host, result, x0, x1,
                           vmap_method='sequential')


def resample_exact(key: jax.Array, perm: jax.Array,
                   num_pairs: int) -> tuple[jax.Array, jax.Array]:
  """Draws pairs (i, perm[i]) with replacement from the plan perm / n."""
  i = jax.random.randint(key, (num_pairs,), 0, perm.shape[0])
  return i, perm[i]


def _solve(geom: geometry.Geometry, a=None, b=None, tau_a=1.0, tau_b=1.0,
           max_iterations=2000) -> jax.Array:
  problem = linear_problem.LinearProblem(geom, a, b, tau_a=tau_a,
                                         tau_b=tau_b)
  solver = sinkhorn.Sinkhorn(max_iterations=max_iterations)
  return solver(problem).matrix


def entropic_plan(x0: jax.Array, x1: jax.Array, epsilon: float) -> jax.Array:
  """Entropic OT plan (n, m) with uniform marginals, regularisation epsilon.

  epsilon multiplies the entropy term of the plan with the unnormalised
  squared Euclidean cost, as in POT's `sinkhorn(a, b, M, reg)`.
  """
  geom = pointcloud.PointCloud(_flat(x0), _flat(x1), epsilon=epsilon)
  return _solve(geom)


def unbalanced_plan(x0: jax.Array, x1: jax.Array, epsilon: float,
                    marginal_penalty: float) -> jax.Array:
  """Entropic unbalanced OT plan (n, m).

  Marginals are relaxed by a KL penalty of weight `marginal_penalty` (POT's
  `reg_m`); ott-jax expresses it as tau = rho / (rho + epsilon).
  """
  tau = marginal_penalty / (marginal_penalty + epsilon)
  geom = pointcloud.PointCloud(_flat(x0), _flat(x1), epsilon=epsilon)
  return _solve(geom, tau_a=tau, tau_b=tau)


def partial_plan(x0: jax.Array, x1: jax.Array, epsilon: float,
                 mass: float) -> jax.Array:
  """Entropic partial OT plan (n, m) transporting total mass `mass` <= 1.

  Uniform weights on both minibatches; the solver is the dummy-point
  formulation shared with pda (`common.ot.partial_plan`).
  """
  if not 0.0 < mass <= 1.0:
    raise ValueError(f'Partial OT mass must be in (0, 1], got {mass}.')
  n, m = x0.shape[0], x1.shape[0]
  cost = pointcloud.PointCloud(_flat(x0), _flat(x1)).cost_matrix
  return ot.partial_plan(cost, jnp.full((n,), 1.0 / n),
                         jnp.full((m,), 1.0 / m), mass, epsilon)


def sample_from_plan(key: jax.Array, plan: jax.Array,
                     num_pairs: int) -> tuple[jax.Array, jax.Array]:
  """Draws index pairs (i, j) with probability plan_ij / sum(plan).

  Inverse-CDF sampling: one cumulative sum of the (n m) entries and a binary
  search per draw. (Gumbel-max `jax.random.categorical` would draw
  num_pairs x n x m noise values, a thousand times more work at n = 256.)
  """
  m = plan.shape[1]
  cdf = jnp.cumsum(jnp.maximum(plan.reshape(-1), 0.0))
  u = jax.random.uniform(key, (num_pairs,), cdf.dtype) * cdf[-1]
  flat = jnp.clip(jnp.searchsorted(cdf, u, side='right'), 0, cdf.shape[0] - 1)
  return flat // m, flat % m


def _flat(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)
