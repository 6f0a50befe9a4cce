"""Sampling a trained flow with diffrax: ODE and SDE, forward or backward.

`integrate_ode` solves dx/dt = v(t, x) from t0 to t1 (t1 < t0 integrates
backward, mapping targets to sources) with adaptive Dopri5 or fixed-step
Euler, and carries along the path energy int ||v(t, x_t)||^2 dt in the same
solve. `integrate_sde` solves dx = [v + s](t, x) dt + sigma dW with
Euler-Maruyama (SF2M).

Shapes: x is (n, d); the vector field maps (t scalar, x (n, d)) -> (n, d).
"""

import dataclasses
from typing import Callable

import diffrax
import jax
import jax.numpy as jnp
import lineax
import optimistix as optx

VectorField = Callable[[jax.Array, jax.Array], jax.Array]

# Dopri5 has 7 stages, the first shared with the previous step's last (FSAL):
# 6 new evaluations per attempted step, plus 1 for the very first stage.
_DOPRI5_EVALS_PER_STEP = 6


@dataclasses.dataclass(frozen=True)
class Solution:
  """Result of a solve.

  Attributes:
    x: (n, d) final points.
    trajectory: (num_saved, n, d) points at `ts`.
    ts: (num_saved,) save times.
    path_energy: (n,) int ||v(t, x_t)||^2 dt along each trajectory.
    nfe: number of evaluations of the vector field (for the whole batch).
  """
  x: jax.Array
  trajectory: jax.Array
  ts: jax.Array
  path_energy: jax.Array
  nfe: jax.Array


jax.tree_util.register_dataclass(
    Solution, data_fields=['x', 'trajectory', 'ts', 'path_energy', 'nfe'],
    meta_fields=[])


def integrate_ode(vector_field: VectorField, x0: jax.Array, *,
                  t0: float = 0.0, t1: float = 1.0, solver: str = 'dopri5',
                  num_steps: int = 100, rtol: float = 1e-4,
                  atol: float = 1e-4, num_saved: int = 11,
                  max_steps: int = 4096) -> Solution:
  """Pushes x0 along the flow from t0 to t1.

  Args:
    vector_field: v(t, x).
    x0: (n, d) starting points.
    t0, t1: start and end time; t1 < t0 runs backward in time.
    solver: 'dopri5' (adaptive, rtol / atol) or 'euler' (num_steps steps).
    num_steps: Euler steps; Dopri5's first step size is (t1 - t0) / num_steps.
    rtol, atol: Dopri5 tolerances.
    num_saved: trajectory points saved, evenly spaced in time.
    max_steps: the solver gives up beyond this many steps.
  """
  if solver not in ('dopri5', 'euler'):
    raise ValueError(f"solver={solver!r}: choose 'dopri5' or 'euler'.")
  if num_steps < 1 or num_saved < 2:
    raise ValueError(f'num_steps={num_steps} must be >= 1 and '
                     f'num_saved={num_saved} >= 2.')
  direction = 1.0 if t1 >= t0 else -1.0

  # The path energy is accumulated as an extra state, so one solve gives
  # both the samples and int ||v||^2 dt (with |dt|, so backward runs count
  # positively).
  def field(t, state, args):
    del args
    x, _ = state
    v = vector_field(t, x)
    return v, direction * jnp.sum(v ** 2, axis=-1)

  ts = jnp.linspace(t0, t1, num_saved)
  dt0 = (t1 - t0) / num_steps
  if solver == 'dopri5':
    method = diffrax.Dopri5()
    # Step sizes are controlled by the error in x only: the path energy
    # rides along and must not change the solver's steps (nor its NFE).
    controller = diffrax.PIDController(
        rtol=rtol, atol=atol, norm=lambda state: optx.rms_norm(state[0]))
  else:
    method, controller = diffrax.Euler(), diffrax.ConstantStepSize()
    max_steps = num_steps

  energy0 = jnp.zeros(x0.shape[0], x0.dtype)
  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(field), method, t0=t0, t1=t1, dt0=dt0,
      y0=(x0, energy0), saveat=diffrax.SaveAt(ts=ts),
      stepsize_controller=controller, max_steps=max_steps)

  if solver == 'dopri5':
    nfe = _DOPRI5_EVALS_PER_STEP * sol.stats['num_steps'] + 1
  else:
    nfe = sol.stats['num_steps']
  trajectory, energy = sol.ys
  return Solution(x=trajectory[-1], trajectory=trajectory, ts=ts,
                  path_energy=energy[-1], nfe=nfe)


def integrate_sde(drift: VectorField, x0: jax.Array, sigma: float,
                  key: jax.Array, *, t0: float = 0.0, t1: float = 1.0,
                  num_steps: int = 100, num_saved: int = 11) -> Solution:
  """Euler-Maruyama for dx = drift(t, x) dt + sigma dW, from t0 to t1.

  For SF2M, drift = v + s with s the learned (sigma^2 / 2) grad log p_t.
  The path energy reported is that of the drift.
  """
  if num_steps < 1:
    raise ValueError(f'num_steps={num_steps} must be >= 1.')
  direction = 1.0 if t1 >= t0 else -1.0
  n, size = x0.shape[0], x0.size

  # One flat state [x (n * d), energy (n)], so that the noise is a diagonal
  # linear operator: sigma on the x entries, 0 on the energy entries.
  def drift_with_energy(t, state, args):
    del args
    v = drift(t, state[:size].reshape(x0.shape))
    return jnp.concatenate([v.reshape(-1),
                            direction * jnp.sum(v ** 2, axis=-1)])

  noise_scale = jnp.concatenate([jnp.full((size,), sigma, x0.dtype),
                                 jnp.zeros((n,), x0.dtype)])

  def diffusion(t, state, args):
    del t, state, args
    return lineax.DiagonalLinearOperator(noise_scale)

  brownian = diffrax.VirtualBrownianTree(
      min(t0, t1), max(t0, t1), tol=abs(t1 - t0) / (4 * num_steps),
      shape=jax.ShapeDtypeStruct((size + n,), x0.dtype), key=key)
  terms = diffrax.MultiTerm(diffrax.ODETerm(drift_with_energy),
                            diffrax.ControlTerm(diffusion, brownian))
  ts = jnp.linspace(t0, t1, num_saved)
  sol = diffrax.diffeqsolve(
      terms, diffrax.Euler(), t0=t0, t1=t1, dt0=(t1 - t0) / num_steps,
      y0=jnp.concatenate([x0.reshape(-1), jnp.zeros((n,), x0.dtype)]),
      saveat=diffrax.SaveAt(ts=ts), max_steps=num_steps)
  trajectory = sol.ys[:, :size].reshape((num_saved,) + x0.shape)
  return Solution(x=trajectory[-1], trajectory=trajectory, ts=ts,
                  path_energy=sol.ys[-1, size:], nfe=sol.stats['num_steps'])
