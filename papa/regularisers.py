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

import itertools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

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


def _box_mask(key: jax.Array, spatial: tuple, fraction: jax.Array):
  """A boolean box over the spatial shape covering ~`fraction` of it."""
  side = fraction ** (1.0 / len(spatial))
  keys = jax.random.split(key, len(spatial))
  mask = jnp.ones(spatial, bool)
  for axis, (size, k) in enumerate(zip(spatial, keys)):
    length = jnp.round(side * size).astype(jnp.int32)
    start = jax.random.randint(k, (), 0, size - length + 1)
    index = jnp.arange(size)
    inside = (index >= start) & (index < start + length)
    shape = [1] * len(spatial)
    shape[axis] = size
    mask = mask & inside.reshape(shape)
  return mask


def _beta_pair(key, alpha_mix, alpha_cut):
  """lam ~ Beta(alpha, alpha) for mixup and CutMix, 1 where alpha is 0.

  Beta(a, a) = G1 / (G1 + G2) with G1, G2 ~ Gamma(a): one gamma draw of four
  values compiles about twice as fast as two `jax.random.beta` calls. An off
  regulariser (alpha = 0, where Beta is undefined) draws Gamma(1) instead and
  its lam is then overridden to 1.
  """
  alphas = jnp.stack([alpha_mix, alpha_mix, alpha_cut, alpha_cut])
  safe = jnp.where(alphas > 0, alphas, 1.0)
  g = jax.random.gamma(key, safe)
  lam_mix = jnp.where(alpha_mix > 0, g[0] / (g[0] + g[1]), 1.0)
  lam_cut = jnp.where(alpha_cut > 0, g[2] / (g[2] + g[3]), 1.0)
  return lam_mix, lam_cut


def apply(key: jax.Array, x: jax.Array, y: jax.Array,
          hyper: Mapping[str, jax.Array], num_classes: int):
  """One member's batch with its regularisers applied.

  Args:
    key: this step's key of the member.
    x: inputs (B, *spatial, channels).
    y: integer labels (B,).
    hyper: the member's four scalars (see the module docstring).
    num_classes: number of classes.

  Returns:
    (x, targets) with targets (B, num_classes) soft labels summing to 1.
  """
  k_erase, k_box, k_perm, k_lam, k_box2, k_coin = jax.random.split(key, 6)
  B, spatial = x.shape[0], x.shape[1:-1]
  eps = hyper['label_smoothing']
  targets = (1 - eps) * jax.nn.one_hot(y, num_classes) + eps / num_classes

  # Random erasing, example by example.
  erase_keys = jax.random.split(k_box, B)
  area = jax.random.uniform(k_erase, (B,), minval=0.02, maxval=0.33)
  boxes = jax.vmap(lambda k, f: _box_mask(k, spatial, f))(erase_keys, area)
  chosen = jax.random.uniform(k_coin, (B,)) < hyper['erasing_prob']
  erase = (boxes & chosen.reshape((B,) + (1,) * len(spatial)))[..., None]
  x = jnp.where(erase, 0.0, x)

  # Mixup and CutMix pair each example with one of a shuffled batch.
  perm = jax.random.permutation(k_perm, B)
  lam_mix, lam_cut = _beta_pair(k_lam, hyper['mixup_alpha'],
                                hyper['cutmix_alpha'])
  x_mix = lam_mix * x + (1 - lam_mix) * x[perm]
  box = _box_mask(k_box2, spatial, 1 - lam_cut)[None, ..., None]
  x_cut = jnp.where(box, x[perm], x)
  lam_cut = 1 - box.mean()

  # With both on, a fair coin picks one per batch.
  use_mix = hyper['mixup_alpha'] > 0
  use_cut = hyper['cutmix_alpha'] > 0
  coin = jax.random.bernoulli(jax.random.fold_in(k_coin, 1))
  use_cut = use_cut & (~use_mix | coin)
  use_mix = use_mix & ~use_cut
  lam = jnp.where(use_mix, lam_mix, jnp.where(use_cut, lam_cut, 1.0))
  x = jnp.where(use_mix, x_mix, jnp.where(use_cut, x_cut, x))
  targets = lam * targets + (1 - lam) * targets[perm]
  return x, targets
