"""Minibatch optimal-transport losses of JUMBOT and MPOT, solved by ott-jax.

Both methods compare a source minibatch (features g(x_s), labels y_s) with a
target minibatch (features g(x_t), predictions f(g(x_t))) through the joint
ground cost

    M_ij = eta_1 * ||g(x_s_i) - g(x_t_j)||^2 - eta_2 * <onehot(y_s_i), log f(g(x_t_j))>,

solve a transport plan pi on M with the plan held fixed (no gradient through
the solver), and minimise eta_3 * <pi, M>: the gradient flows through M only.

* JUMBOT (Fatras et al., 2021) uses entropic *unbalanced* OT: KL penalties of
  weight tau on both marginals, entropy weight epsilon. ott-jax solves it with
  `tau_a = tau_b = tau / (tau + epsilon)`; its log-domain iterations are the
  same fixed point as POT's `sinkhorn_knopp_unbalanced` the benchmark used.
* MPOT (Nguyen et al., 2022) uses entropic *partial* OT: transport exactly a
  mass m < 1 between uniform marginals, with no penalty on the rest.

Partial OT formulation. ott-jax has no partial solver, so partial OT is
written as balanced OT with one dummy point on each side (Chapel et al.,
2020): the source gets a dummy of mass sum(b) - m, the target one of mass
sum(a) - m; a real point pays 0 to move to a dummy, and dummy-to-dummy costs
a large A. For exact OT with M >= 0 and any A > 0 the real block of the
optimal extended plan is an optimal partial plan of mass m (tested against
scipy's linprog). With entropy, ott's log-domain Sinkhorn solves the extended
problem in float32; A = max(M) + 30 epsilon keeps the dummy-to-dummy mass below
exp(-30) so the real block carries mass m to float32 precision.

How it compares with the benchmark's solver. The benchmark calls POT's
`entropic_partial_wasserstein`, which minimises <pi, M> + epsilon KL over the
real plan only, by Dykstra's KL projections onto {pi 1 <= a}, {pi^T 1 <= b}
and {sum pi = m} (Benamou et al., 2015). Here the entropy also covers the
slack (the dummy row and column), so the two entropic plans differ although
both have mass m and both tend to the exact partial plan as epsilon -> 0.
Measured against a float64 re-implementation of those projections (in the
tests), with uniform marginals and mass 0.1 or 0.3, the total variation
between the two plans, as a share of m, is at the benchmark's epsilons 0.5
to 1.5 (largest at 0.5): on 40 x 40 problems (MPOT's batch) about 1% for
costs in [0, 1], 2-6% for costs in [0, 5] and 3-8% for costs in [0, 10]; on
13 x 11 problems 1-2% for costs in [0, 1] and 6-11% for costs in [0, 10].
The dummy-point plan is the more diffuse one (its transport cost is higher).
With eta_2 = 1 (the reduced grid) MPOT's costs here are of order 1 to 10, so
its plans are close to, not the same as, the benchmark's. Matching them
exactly would need those projections written in JAX (log domain, for
float32), which this module does not do.
"""

import jax
import jax.numpy as jnp
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from common import ot

# Sinkhorn settings shared by both solvers: log-domain for float32 stability
# at small epsilon, and an iteration cap so a jitted step has a fixed budget.
SINKHORN_THRESHOLD = 1e-4
SINKHORN_MAX_ITERATIONS = 1000


def _solver(max_iterations: int) -> sinkhorn.Sinkhorn:
  return sinkhorn.Sinkhorn(lse_mode=True, threshold=SINKHORN_THRESHOLD,
                           max_iterations=max_iterations)


def joint_cost(g_s: jax.Array, y_s: jax.Array, g_t: jax.Array,
               logits_t: jax.Array, eta_1, eta_2) -> jax.Array:
  """The JUMBOT / MPOT ground cost M, shape (n_s, n_t).

  Args:
    g_s: source features, (n_s, d).
    y_s: source labels, (n_s,) ints.
    g_t: target features, (n_t, d).
    logits_t: target logits, (n_t, K).
    eta_1: weight of the squared feature distance.
    eta_2: weight of the label cross-entropy term.
  """
  sq_dist = (jnp.sum(g_s**2, 1)[:, None] + jnp.sum(g_t**2, 1)[None, :]
             - 2.0 * g_s @ g_t.T)
  sq_dist = jnp.maximum(sq_dist, 0.0)
  log_p_t = jax.nn.log_softmax(logits_t, axis=-1)
  cross_entropy = -log_p_t[:, y_s].T
  return eta_1 * sq_dist + eta_2 * cross_entropy


def unbalanced_plan(M: jax.Array, a: jax.Array, b: jax.Array, epsilon,
                    tau, max_iterations: int = SINKHORN_MAX_ITERATIONS
                    ) -> jax.Array:
  """Entropic unbalanced OT plan with KL marginal penalties of weight tau.

  Solves min_pi <pi, M> + epsilon KL(pi | 1) + tau (KL(pi 1 | a) +
  KL(pi^T 1 | b)), the problem of POT's `sinkhorn_knopp_unbalanced(a, b, M,
  reg=epsilon, reg_m=tau)`.

  Args:
    M: cost, (n, m).
    a: source weights, (n,).
    b: target weights, (m,).
    epsilon: entropy weight (absolute, not relative to the cost).
    tau: marginal KL weight.
    max_iterations: Sinkhorn iteration cap.

  Returns:
    The plan, (n, m).
  """
  geom = geometry.Geometry(cost_matrix=M, epsilon=epsilon)
  rho = tau / (tau + epsilon)
  problem = linear_problem.LinearProblem(geom, a=a, b=b, tau_a=rho, tau_b=rho)
  return _solver(max_iterations)(problem).matrix


def partial_plan(M: jax.Array, a: jax.Array, b: jax.Array, mass, epsilon,
                 max_iterations: int = SINKHORN_MAX_ITERATIONS) -> jax.Array:
  """Entropic partial OT plan moving total mass `mass`, (n, m).

  `common.ot.partial_plan` (the dummy-point form, shared with cfm) at this
  module's Sinkhorn settings.
  """
  return ot.partial_plan(M, a, b, mass, epsilon, threshold=SINKHORN_THRESHOLD,
                         max_iterations=max_iterations)


def _plan_loss(M: jax.Array, plan_fn, eta_3) -> jax.Array:
  """eta_3 <pi, M>, pi = plan_fn(stop_gradient(M), a, b) with uniform
  marginals; the plan is a constant of the gradient, as in both papers."""
  n, m = M.shape
  a, b = jnp.full((n,), 1.0 / n), jnp.full((m,), 1.0 / m)
  pi = jax.lax.stop_gradient(plan_fn(jax.lax.stop_gradient(M), a, b))
  return eta_3 * jnp.sum(pi * M)


def jumbot_loss(M: jax.Array, *, epsilon, tau, eta_3) -> jax.Array:
  """eta_3 <pi, M> with pi the unbalanced plan of stop_gradient(M)."""
  return _plan_loss(
      M, lambda M, a, b: unbalanced_plan(M, a, b, epsilon, tau), eta_3)


def mpot_loss(M: jax.Array, *, epsilon, mass, eta_3) -> jax.Array:
  """eta_3 <pi, M> with pi the partial plan of stop_gradient(M)."""
  return _plan_loss(
      M, lambda M, a, b: partial_plan(M, a, b, mass, epsilon), eta_3)


def mpot_mass(step, num_steps: int, mass):
  """MPOT's mass schedule: linear from 0.01 to `mass` over the first half."""
  half = num_steps / 2.0
  ramp = 0.01 + (mass - 0.01) * step / half
  return jnp.where(step <= half, ramp, mass)
