"""The two-pass protocol: train to w*, replay the run and measure against it.

1. A first pass trains a population of seeds (vmapped into one jitted
   program) for `num_steps` and keeps the final iterates w*; it then
   continues the same run to twice the budget for the 'doubled' control.
2. A second pass replays the same seeded run from the same initial weights,
   with the probes attached, and measures every step against the references:

     final       w* = the final iterate of the same run (the protocol);
     doubled     w* = the same run continued to 2 x num_steps;
     other_seed  w* = the final iterate of the next seed's run;
     random      a Gaussian direction of the dimension of w, of norm
                 ||w_0 - w*|| (a null reference: gamma ~ N(0, 1/D)).

   The replay must end exactly (bit for bit) on w*: otherwise the numbers
   would measure a different path, and `ReplayMismatch` is raised.

`summarize` turns the stored pieces into the per-run summary: the fraction
of steps with gamma > 0 (overall and before the last 10% of the steps) and
quantiles of gamma, RSI, EB and eta*.
"""

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import loop
from geometry import probes as probes_lib
from geometry import quantities

AXIS = 'member'
CONTROLS = ('doubled', 'other_seed', 'random')
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


class ReplayMismatch(RuntimeError):
  """The measuring pass did not retrace the first pass bit for bit."""


@dataclasses.dataclass(frozen=True)
class Setup:
  """One population of runs that differ only by seed.

  Attributes:
    loss_fn: `(params, model_state, batch, key) -> (loss, (model_state,
      metrics))` for one member.
    optimizer: the optax transformation.
    params: initial weights stacked along a leading member axis (S, ...).
    batch_fn: `step -> batch` with a leading member axis (S, ...), traceable.
    num_steps: the training budget T.
    learning_rate_fn: the schedule, for the logs.
    probe_batches: fixed batches stacked (B, ...), shared by all members,
      measured every `probe_every` steps; None skips them.
    probe_every: see probe_batches.
    full_batch: the whole training set as one batch (1, ...), measured
      every `steps_per_epoch` steps; None skips it.
    steps_per_epoch: see full_batch.
  """
  loss_fn: Callable
  optimizer: optax.GradientTransformation
  params: Any
  batch_fn: Callable
  num_steps: int
  learning_rate_fn: Callable | None = None
  probe_batches: Any = None
  probe_every: int = 50
  full_batch: Any = None
  steps_per_epoch: int = 1

  @property
  def num_members(self) -> int:
    return int(jax.tree.leaves(self.params)[0].shape[0])


def population_step(loss_fn, optimizer, *, learning_rate_fn=None,
                    probes: Sequence[loop.Probe] = ()) -> loop.StepFn:
  """`gradient_step` vmapped over the member axis (named `AXIS`).

  The step counter stays a scalar, so the probes' schedules stay real
  branches; member m draws its randomness from fold_in(key, m).
  """
  step_fn = loop.gradient_step(loss_fn, optimizer,
                               learning_rate_fn=learning_rate_fn,
                               probes=probes)

  def member_step(state, batch, key):
    key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
    return step_fn(state, batch, key)

  def fn(state, batch, key):
    axes = state.replace(step=None, params=0, opt_state=0, model_state=0)
    new_state, metrics = jax.vmap(member_step, in_axes=(axes, 0, None),
                                  out_axes=(axes, 0), axis_name=AXIS)(
                                      state, batch, key)
    return new_state, metrics

  return fn


def init_state(setup: Setup) -> loop.TrainState:
  """A fresh population state (a copy: the loop donates its input)."""
  params = jax.tree.map(jnp.copy, setup.params)
  opt_state = jax.jit(jax.vmap(setup.optimizer.init))(params)
  return loop.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                         opt_state=opt_state, model_state={})


def chunk_length(num_steps: int, most: int = 1000) -> int:
  """The largest divisor of num_steps up to `most`: steps per jitted call.

  Dividing T keeps T a log boundary (where the first pass copies w*), and
  one chunk length means one compilation.
  """
  return max(k for k in range(1, min(most, num_steps) + 1)
             if num_steps % k == 0)


def bit_equal(a, b) -> bool:
  """Whether two pytrees hold exactly the same bits."""
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@dataclasses.dataclass
class Trajectory:
  """What the measuring pass recorded.

  Attributes:
    step_metrics: name -> array (T, S, ...) of raw pieces (see probes).
    references: the reference names measured.
    num_steps: T.
    replay_exact: the replay ended bit for bit on w* (always True when
      returned: a mismatch raises).
    seconds: wall time of (first pass to 2T, measuring pass), compilation
      included.
  """
  step_metrics: dict
  references: tuple
  num_steps: int
  replay_exact: bool
  seconds: tuple

  def geometry(self, kind: str = 'mb',
               reference: str = 'final') -> quantities.Geometry:
    return probes_lib.geometry_of(self.step_metrics, kind, reference)


def run(setup: Setup, *, seed: int = 0, controls: Sequence[str] = CONTROLS,
        workdir: str | None = None) -> Trajectory:
  """Both passes for a `Setup` (seeds vmapped by `population_step`)."""
  return two_pass(
      init_fn=lambda: init_state(setup),
      step_for=lambda probes: population_step(
          setup.loss_fn, setup.optimizer,
          learning_rate_fn=setup.learning_rate_fn, probes=probes),
      probes_for=lambda references: make_probes(setup, references),
      batch_fn=setup.batch_fn, num_steps=setup.num_steps, seed=seed,
      controls=controls, workdir=workdir)


def two_pass(*, init_fn: Callable[[], loop.TrainState],
             step_for: Callable[[list], loop.StepFn],
             probes_for: Callable[[dict], list], num_steps: int,
             seed: int = 0, controls: Sequence[str] = CONTROLS,
             workdir: str | None = None, **batches) -> Trajectory:
  """Runs both passes of any population's training and measures the second.

  Works for any line's step: `step_for(probes)` must build the same step
  with the probes attached (probes=[] for the first pass).

  Args:
    init_fn: a fresh initial state, parameters with a leading member axis
      (S, ...); called once per pass (the loop donates its input).
    step_for: probes -> step_fn.
    probes_for: references (name -> `quantities.Reference`, values (S, ...))
      -> the probes of the measuring pass.
    num_steps: the budget T.
    seed: root of the loop's randomness (the same in both passes).
    controls: a subset of CONTROLS; 'other_seed' needs >= 2 members.
    workdir: if given, the measuring pass logs metrics.jsonl and
      steps.jsonl there (and a final checkpoint: run again, it reads the
      steps back instead of training); the first pass keeps nothing.
    **batches: `batch_fn=` or `host_batch_fn=`, as for `loop.train`.

  Returns:
    A `Trajectory`.

  Raises:
    ReplayMismatch: the measuring pass did not end bit for bit on w*.
  """
  unknown = set(controls) - set(CONTROLS)
  if unknown:
    raise ValueError(f'Unknown controls {sorted(unknown)}; choose from '
                     f'{list(CONTROLS)}.')
  w0 = init_fn().params
  if 'other_seed' in controls and jax.tree.leaves(w0)[0].shape[0] < 2:
    raise ValueError("The 'other_seed' control needs at least 2 seeds in the "
                     'population; add seeds or drop the control.')
  train = functools.partial(
      loop.train, seed=seed, log_every=chunk_length(num_steps),
      checkpoint_every=0, quiet=True, **batches)
  timer = _Timer()

  # Pass 1, run on to 2T for the 'doubled' control: one compiled program,
  # whose eval hook copies the weights at step T.
  w_star = {}

  def keep_final(state, step):
    if step == num_steps:
      w_star['final'] = jax.tree.map(jnp.copy, state.params)
    return {}

  total = (2 if 'doubled' in controls else 1) * num_steps
  with timer:
    first = train(init_fn(), step_for([]), num_steps=total, workdir=None,
                  eval_fn=keep_final, eval_every=num_steps,
                  name='geometry/pass1')
  w_star = w_star['final']
  references = {'final': quantities.Reference(w_star)}
  if 'doubled' in controls:
    references['doubled'] = quantities.Reference(first.state.params)
  if 'other_seed' in controls:
    references['other_seed'] = quantities.Reference(
        jax.tree.map(lambda x: jnp.roll(x, -1, axis=0), w_star))
  if 'random' in controls:
    references['random'] = quantities.Reference(
        _random_directions(w0, w_star, seed), kind='direction')

  # Pass 2: the same run, measured at every step against the references.
  probes = probes_for(references)
  keep = probes_lib.metric_names(probes) + ('loss',)
  with timer:
    second = train(init_fn(), step_for(probes), num_steps=num_steps,
                   workdir=workdir, keep_step_metrics=keep,
                   name='geometry/pass2')
  if not bit_equal(second.state.params, w_star):
    gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(second.state.params), jax.tree.leaves(w_star)))
    raise ReplayMismatch(
        f'The measuring pass ended {gap:.3g} away from the first pass '
        '(largest weight difference): the run is not reproducible, so w* is '
        'not the end of the measured path. Check that batches and keys '
        'depend only on (seed, step).')

  step_metrics = second.step_metrics
  if second.resumed_from is not None:
    step_metrics = read_steps(os.path.join(workdir, 'steps.jsonl'), keep)
  return Trajectory(step_metrics=step_metrics,
                    references=tuple(references), num_steps=num_steps,
                    replay_exact=True, seconds=tuple(timer.laps))


def make_probes(setup: Setup, references: dict) -> list:
  """The step probe plus the fixed-batch and full-batch probes."""
  probes = [probes_lib.StepProbe(references, axis_name=AXIS)]
  if setup.probe_batches is not None:
    probes.append(probes_lib.BatchSetProbe(
        references, setup.probe_batches, every=setup.probe_every,
        name='probe', axis_name=AXIS))
  if setup.full_batch is not None:
    probes.append(probes_lib.BatchSetProbe(
        references, setup.full_batch, every=setup.steps_per_epoch,
        name='full', axis_name=AXIS))
  return probes


def _random_directions(w0, w_star, seed: int):
  """Per member, a Gaussian direction of norm ||w_0 - w*||.

  Drawn with numpy: jax's generator would compile one program per leaf
  shape, which costs more than the whole measuring pass of a small model.
  """
  rng = np.random.default_rng([seed, 7919])
  draws = jax.tree.map(
      lambda a: rng.standard_normal(a.shape).astype(a.dtype), w0)
  flat = lambda t: np.concatenate(
      [np.asarray(x).reshape(x.shape[0], -1) for x in jax.tree.leaves(t)], 1)
  scale = (np.linalg.norm(flat(w0) - flat(w_star), axis=1) /
           np.linalg.norm(flat(draws), axis=1))
  return jax.tree.map(
      lambda x: jnp.asarray(x * scale.reshape((-1,) + (1,) * (x.ndim - 1))),
      draws)


def read_steps(path: str, keys: Sequence[str]) -> dict:
  """steps.jsonl read back into arrays, the layout of `step_metrics`."""
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows.sort(key=lambda row: row['step'])
  out = {'step': np.asarray([row['step'] for row in rows])}
  for key in keys:
    out[key] = np.asarray([row[key] for row in rows], np.float32)
  return out


class _Timer:
  """Wall time of each `with` block, in order."""

  def __init__(self):
    self.laps = []

  def __enter__(self):
    self._tick = time.perf_counter()

  def __exit__(self, *exc):
    self.laps.append(time.perf_counter() - self._tick)


# ---------------------------------------------------------------------------
# Summaries.


def _quantiles(values: np.ndarray) -> dict:
  if not values.size:
    return {f'q{int(100 * q):02d}': float('nan') for q in QUANTILES}
  return {f'q{int(100 * q):02d}': float(v)
          for q, v in zip(QUANTILES, np.quantile(values, QUANTILES))}


def summarize(geometry: quantities.Geometry, num_steps: int, *,
              early_fraction: float = 0.9, steps: np.ndarray | None = None
              ) -> list[dict]:
  """One summary per member of one kind of measurement.

  Args:
    geometry: pieces of shape (T', S) or (T', S, B), NaN where unmeasured.
    num_steps: the budget T; "early" means step < early_fraction * T.
    early_fraction: see num_steps.
    steps: the step of each row (T',); defaults to 0..T'-1.

  Returns:
    A list of S dicts: frac_gamma_positive(_early), quantiles of gamma, rsi,
    eb and eta_star over the measured steps, eta_star_by_decile (its median
    in each tenth of training) and late_rise_rsi / late_rise_eb (median over
    the last 5% of steps over the median of the middle 40-60%).
  """
  ratios = {k: np.asarray(v) for k, v in geometry.ratios().items()}
  gamma = ratios['gamma']
  steps = np.arange(gamma.shape[0]) if steps is None else np.asarray(steps)
  shape = (-1,) + (1,) * (gamma.ndim - 1)
  at = np.broadcast_to(steps.reshape(shape), gamma.shape)
  early = at < early_fraction * num_steps
  late = at >= 0.95 * num_steps
  middle = (at >= 0.4 * num_steps) & (at < 0.6 * num_steps)
  decile = np.minimum((10 * at) // num_steps, 9)

  def median(values, mask, m):
    values = _finite(values[:, m], mask[:, m])
    return float(np.median(values)) if values.size else float('nan')

  everywhere = np.ones_like(early)
  out = []
  for m in range(gamma.shape[1]):
    record = dict(
        frac_gamma_positive=_frac_positive(gamma[:, m], everywhere[:, m]),
        frac_gamma_positive_early=_frac_positive(gamma[:, m], early[:, m]),
        num_measured=int(_finite(gamma[:, m], everywhere[:, m]).size))
    for name, values in ratios.items():
      record[name] = _quantiles(_finite(values[:, m], everywhere[:, m]))
    record['eta_star_by_decile'] = [
        median(ratios['eta_star'], decile == k, m) for k in range(10)]
    for name in ('rsi', 'eb'):
      record[f'late_rise_{name}'] = (median(ratios[name], late, m) /
                                     median(ratios[name], middle, m))
    out.append(record)
  return out


def _finite(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
  return values[np.isfinite(values) & mask]


def _frac_positive(gamma: np.ndarray, mask: np.ndarray) -> float:
  values = _finite(gamma, mask)
  return float(np.mean(values > 0)) if values.size else float('nan')
