"""Per-member training regularisers: mixup, CutMix, label smoothing, erasing.

A member's regularisers are four scalars, so a population carries them as
arrays of shape (N,) and the step vmaps over them like over the weights:

  mixup_alpha      Beta(alpha, alpha) mixing of inputs and targets; 0 = off.
  cutmix_alpha     a box of the other example pasted in, area 1 - lam with
                   lam ~ Beta(alpha, alpha); 0 = off. On signals the box is a
                   segment. When both mixings are on, each batch uses one of
                   them with chance 1/2.
  label_smoothing  targets (1 - eps) onehot + eps / classes.
  erasing_prob     chance that an example has a random box (2% to 33% of its
                   area) set to zero.
"""

import functools
import itertools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

NAMES = ('mixup_alpha', 'cutmix_alpha', 'label_smoothing', 'erasing_prob')

# The grid each member draws its combination from (2 x 2 x 2 x 2 = 16).
DEFAULT_GRID = {
    'mixup_alpha': (0.0, 0.2),
    'cutmix_alpha': (0.0, 1.0),
    'label_smoothing': (0.0, 0.1),
    'erasing_prob': (0.0, 0.25),
}


def check_grid(grid: Mapping[str, Sequence[float]]) -> dict:
  """Every name known, every value list non-empty and in range."""
  unknown = sorted(set(grid) - set(NAMES))
  if unknown:
    raise ValueError(f'Unknown regulariser(s) {unknown} in '
                     f'config.regularisers; choose from {list(NAMES)}.')
  checked = {}
  for name in NAMES:
    values = tuple(float(v) for v in grid.get(name, (0.0,)))
    upper = 1.0 if name in ('label_smoothing', 'erasing_prob') else np.inf
    if not values or any(not 0.0 <= v <= upper for v in values):
      raise ValueError(f'config.regularisers.{name}={values} must be a '
                       f'non-empty list of values in [0, {upper}].')
    checked[name] = values
  return checked


def member_combinations(grid: Mapping[str, Sequence[float]],
                        member_seeds: Sequence[int]) -> dict[str, np.ndarray]:
  """Each member's combination, drawn uniformly from the grid by its seed.

  Members that share a seed share their combination, so a population of
  copies is P copies of one run.

  Returns:
    {name: (N,) float32} in the order of member_seeds.
  """
  grid = check_grid(grid)
  combos = list(itertools.product(*(grid[name] for name in NAMES)))
  picks = [combos[np.random.default_rng([seed, 7]).integers(len(combos))]
           for seed in member_seeds]
  return {name: np.asarray([p[i] for p in picks], np.float32)
          for i, name in enumerate(NAMES)}


# Knots of the tabulated inverse CDF of Beta(alpha, alpha).
QUANTILES = 513


@functools.lru_cache(maxsize=64)
def _beta_quantiles(alpha: float) -> np.ndarray:
  """Beta(alpha, alpha) quantiles at QUANTILES evenly spaced levels; ones
  when alpha is 0 (the regulariser is off and lam = 1)."""
  if alpha <= 0:
    return np.ones(QUANTILES, np.float32)
  levels = np.linspace(0.0, 1.0, QUANTILES)
  return stats.beta.ppf(levels, alpha, alpha).astype(np.float32)


def prepare(hyper: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Adds each member's mixup and CutMix quantile tables to its scalars.

  lam ~ Beta(alpha, alpha) is then drawn inside the step by interpolating a
  uniform draw in the table: the inverse CDF, linear between 513 knots, so
  each of the 512 segments holds exactly its 1/512 of the probability.
  Why not `jax.random.beta`: its gamma rejection sampler is the costliest
  part of the step to compile (seconds per program on CPU), and the table
  is exact at the knots.

  Args:
    hyper: {name: (N,)} as from `member_combinations`.

  Returns:
    hyper plus 'mixup_quantiles' and 'cutmix_quantiles', each (N, 513).
  """
  out = {name: np.asarray(hyper[name], np.float32) for name in NAMES}
  for name in ('mixup', 'cutmix'):
    alphas = np.atleast_1d(out[f'{name}_alpha'])
    out[f'{name}_quantiles'] = np.stack(
        [_beta_quantiles(float(a)) for a in alphas]).reshape(
            out[f'{name}_alpha'].shape + (QUANTILES,))
  return out


def _beta_draw(u: jax.Array, quantiles: jax.Array) -> jax.Array:
  """lam = F^-1(u) from a member's quantile table (QUANTILES,)."""
  return jnp.interp(u, jnp.linspace(0.0, 1.0, QUANTILES), quantiles)


def _box_mask(u: jax.Array, spatial: tuple, fraction: jax.Array):
  """A boolean box over the spatial shape covering ~`fraction` of it.

  Args:
    u: (len(spatial),) uniforms in [0, 1) that place the box on each axis.
    spatial: the example's spatial shape.
    fraction: the share of the area to cover.
  """
  side = fraction ** (1.0 / len(spatial))
  mask = jnp.ones(spatial, bool)
  for axis, size in enumerate(spatial):
    length = jnp.round(side * size).astype(jnp.int32)
    start = jnp.minimum(jnp.floor(u[axis] * (size - length + 1)),
                        size - length).astype(jnp.int32)
    index = jnp.arange(size)
    inside = (index >= start) & (index < start + length)
    shape = [1] * len(spatial)
    shape[axis] = size
    mask = mask & inside.reshape(shape)
  return mask


def apply(key: jax.Array, x: jax.Array, y: jax.Array,
          hyper: Mapping[str, jax.Array], num_classes: int):
  """One member's batch with its regularisers applied.

  Args:
    key: this step's key of the member.
    x: inputs (B, *spatial, channels).
    y: integer labels (B,).
    hyper: the member's four scalars (see the module docstring) and its
      quantile tables (see `prepare`).
    num_classes: number of classes.

  Returns:
    (x, targets) with targets (B, num_classes) soft labels summing to 1.
  """
  B, spatial = x.shape[0], x.shape[1:-1]
  D = len(spatial)
  eps = hyper['label_smoothing']
  targets = (1 - eps) * jax.nn.one_hot(y, num_classes) + eps / num_classes

  # One uniform draw holds all of the step's randomness: each separate draw
  # compiles its own random-bits kernel, and those dominated compile time.
  u = jax.random.uniform(key, (B * (3 + D) + 3 + D,))
  per_example = u[:B * (3 + D)].reshape(B, 3 + D)
  u_mix, u_cut, u_coin = u[-3 - D], u[-2 - D], u[-1 - D]
  u_box = u[-D:]

  # Random erasing, example by example: area 2% to 33%.
  area = 0.02 + 0.31 * per_example[:, 0]
  chosen = per_example[:, 1] < hyper['erasing_prob']
  boxes = jax.vmap(lambda v, f: _box_mask(v, spatial, f))(
      per_example[:, 3:], area)
  erase = (boxes & chosen.reshape((B,) + (1,) * D))[..., None]
  x = jnp.where(erase, 0.0, x)

  # Mixup and CutMix pair each example with one of a shuffled batch (the
  # argsort of uniforms is a uniform permutation).
  perm = jnp.argsort(per_example[:, 2])
  lam_mix = jnp.where(hyper['mixup_alpha'] > 0,
                      _beta_draw(u_mix, hyper['mixup_quantiles']), 1.0)
  lam_cut = jnp.where(hyper['cutmix_alpha'] > 0,
                      _beta_draw(u_cut, hyper['cutmix_quantiles']), 1.0)
  x_mix = lam_mix * x + (1 - lam_mix) * x[perm]
  box = _box_mask(u_box, spatial, 1 - lam_cut)[None, ..., None]
  x_cut = jnp.where(box, x[perm], x)
  lam_cut = 1 - box.mean()

  # With both on, a fair coin picks one per batch.
  use_mix = hyper['mixup_alpha'] > 0
  use_cut = hyper['cutmix_alpha'] > 0
  use_cut = use_cut & (~use_mix | (u_coin < 0.5))
  use_mix = use_mix & ~use_cut
  lam = jnp.where(use_mix, lam_mix, jnp.where(use_cut, lam_cut, 1.0))
  x = jnp.where(use_mix, x_mix, jnp.where(use_cut, x_cut, x))
  targets = lam * targets + (1 - lam) * targets[perm]
  return x, targets
