"""Optimal transport pieces that more than one line needs, on ott-jax.

ott-jax solves balanced and unbalanced entropic problems but has no partial
solver, so partial OT is written here once as a balanced problem with one
dummy point on each side (Chapel et al., 2020): the source gets a dummy of
mass sum(b) - mass, the target one of mass sum(a) - mass; a real point pays 0
to move to a dummy, and dummy-to-dummy costs A = max(M) + 30 epsilon, which
keeps the dummy-to-dummy mass negligible while staying stable in float32.
The top-left (n, m) block of the extended plan is then a partial plan moving
exactly `mass` (pda/ot_losses.py says how it compares with POT's solver).
"""

import jax
import jax.numpy as jnp
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn


def partial_plan(M: jax.Array, a: jax.Array, b: jax.Array, mass, epsilon, *,
                 threshold: float = 1e-3,
                 max_iterations: int = 2000) -> jax.Array:
  """Entropic partial OT plan of total mass `mass`, shape (n, m).

  Args:
    M: cost, (n, m), non-negative.
    a: source weights, (n,).
    b: target weights, (m,).
    mass: mass to move, 0 < mass <= min(sum a, sum b); may be traced.
    epsilon: entropy weight (absolute); may be traced.
    threshold, max_iterations: Sinkhorn's stopping rule.
  """
  n, m = M.shape
  forbidden = jnp.max(M) + 30.0 * epsilon

  # One dummy row and column: real <-> dummy is free, dummy <-> dummy is not.
  M_ext = jnp.zeros((n + 1, m + 1), M.dtype).at[:n, :m].set(M)
  M_ext = M_ext.at[n, m].set(forbidden)
  a_ext = jnp.concatenate([a, jnp.reshape(jnp.sum(b) - mass, (1,))])
  b_ext = jnp.concatenate([b, jnp.reshape(jnp.sum(a) - mass, (1,))])

  problem = linear_problem.LinearProblem(
      geometry.Geometry(cost_matrix=M_ext, epsilon=epsilon), a=a_ext, b=b_ext)
  solver = sinkhorn.Sinkhorn(lse_mode=True, threshold=threshold,
                             max_iterations=max_iterations)
  return solver(problem).matrix[:n, :m]
