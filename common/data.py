"""One data layer for every line: datasets by name, seeded batching.

Two kinds of data live here.

* Distributions of the flow-matching literature, sampled on the fly by pure
  JAX functions `sample(key, n) -> (n, 2)`. Nothing is stored, so a batch at
  step s is a pure function of (seed, s) and can be drawn inside a jitted
  training step.
* Array datasets with train / validation / test splits: scikit-learn's bundled
  digits, MNIST-1D from its own offline generator, and TFDS datasets read from
  a local `data_dir` (nothing is ever downloaded at run time). They are small
  enough to live on the device whole; `batch_indices` picks a batch inside
  jit from a permutation seeded by (seed, epoch).

The toy distributions follow the reference flow-matching code (torchcfm) and
FFJORD's toy data, as documented on each sampler.
"""

import dataclasses
import functools
import math
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

SampleFn = Callable[[jax.Array, int], jax.Array]


class DataError(ValueError):
  """A dataset name is unknown or its files are missing."""


# ---------------------------------------------------------------------------
# 2-D distributions.


def sample_normal(key: jax.Array, n: int, dim: int = 2) -> jax.Array:
  """Standard normal N(0, I), shape (n, dim)."""
  return jax.random.normal(key, (n, dim))


def sample_8gaussians(key: jax.Array, n: int) -> jax.Array:
  """Eight Gaussians on a circle of radius 5, shape (n, 2).

  As in torchcfm: the mixture centres are the 8 unit compass directions
  times 5, and each component's covariance matrix is sqrt(0.1) * I (the
  reference passes sqrt(var) as the covariance), so its standard deviation
  per coordinate is 0.1 ** 0.25 ~= 0.562.
  """
  key_component, key_noise = jax.random.split(key)
  angles = jnp.arange(8) * (jnp.pi / 4)
  centers = 5.0 * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)
  component = jax.random.randint(key_component, (n,), 0, 8)
  noise = jax.random.normal(key_noise, (n, 2)) * 0.1 ** 0.25
  return centers[component] + noise


def sample_moons(key: jax.Array, n: int) -> jax.Array:
  """Two interleaved half circles, shape (n, 2).

  scikit-learn's `make_moons(noise=0.2)`, mapped by x -> 3x - 1 as torchcfm
  does. make_moons spaces points evenly along each arc; drawing the arc
  position uniformly gives the same distribution without a fixed n.
  """
  key_moon, key_angle, key_noise = jax.random.split(key, 3)
  upper = jax.random.bernoulli(key_moon, 0.5, (n,))
  angle = jax.random.uniform(key_angle, (n,), maxval=jnp.pi)
  outer = jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
  inner = jnp.stack([1.0 - jnp.cos(angle), 0.5 - jnp.sin(angle)], axis=1)
  points = jnp.where(upper[:, None], outer, inner)
  points = points + 0.2 * jax.random.normal(key_noise, (n, 2))
  return 3.0 * points - 1.0


def sample_scurve(key: jax.Array, n: int) -> jax.Array:
  """The S-curve seen from above, shape (n, 2).

  scikit-learn's `make_s_curve(noise=0.1)` keeps coordinates (x, z):
  t ~ U(-3pi/2, 3pi/2), x = sin t, z = sign(t) (cos t - 1); scaled by 2 so
  its spread matches the other 2-D targets.
  """
  key_t, key_noise = jax.random.split(key)
  t = 3 * jnp.pi * (jax.random.uniform(key_t, (n,)) - 0.5)
  points = jnp.stack([jnp.sin(t), jnp.sign(t) * (jnp.cos(t) - 1.0)], axis=1)
  points = points + 0.1 * jax.random.normal(key_noise, (n, 2))
  return 2.0 * points


def sample_checkerboard(key: jax.Array, n: int) -> jax.Array:
  """An 4 x 4 checkerboard on [-4, 4]^2 with every other square filled.

  FFJORD's toy data: x1 ~ U(-2, 2), x2 ~ U(0, 1) minus 0 or 2, shifted by
  floor(x1) mod 2, then everything times 2.
  """
  key_x1, key_x2, key_row = jax.random.split(key, 3)
  x1 = jax.random.uniform(key_x1, (n,), minval=-2.0, maxval=2.0)
  row = 2.0 * jax.random.randint(key_row, (n,), 0, 2)
  x2 = jax.random.uniform(key_x2, (n,)) - row + jnp.mod(jnp.floor(x1), 2)
  return 2.0 * jnp.stack([x1, x2], axis=1)


DISTRIBUTIONS: dict[str, SampleFn] = {
    'normal': sample_normal,
    '8gaussians': sample_8gaussians,
    'moons': sample_moons,
    'scurve': sample_scurve,
    'checkerboard': sample_checkerboard,
}


def distribution(name: str) -> SampleFn:
  """The sampler of a 2-D distribution, by name."""
  if name not in DISTRIBUTIONS:
    raise DataError(
        f'Unknown distribution {name!r}; choose one of '
        f'{sorted(DISTRIBUTIONS)}.')
  return DISTRIBUTIONS[name]


# ---------------------------------------------------------------------------
# Array datasets.


@dataclasses.dataclass(frozen=True)
class Split:
  """Examples x of shape (n, *example_shape) and integer labels y (n,)."""
  x: np.ndarray
  y: np.ndarray

  def __post_init__(self):
    if len(self.x) != len(self.y):
      raise DataError(f'Split has {len(self.x)} inputs but {len(self.y)} '
                      'labels.')

  def __len__(self) -> int:
    return len(self.y)

  def select(self, mask_or_indices) -> 'Split':
    return Split(self.x[mask_or_indices], self.y[mask_or_indices])


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  name: str
  train: Split
  validation: Split
  test: Split
  num_classes: int

  @property
  def example_shape(self) -> tuple:
    return self.train.x.shape[1:]


def _split_off_validation(x, y, fraction: float, seed: int):
  order = np.random.default_rng(seed).permutation(len(y))
  num_validation = int(round(fraction * len(y)))
  validation, train = order[:num_validation], order[num_validation:]
  return Split(x[train], y[train]), Split(x[validation], y[validation])


def _load_digits(seed: int, validation_fraction: float) -> ArrayDataset:
  """scikit-learn's 1,797 8x8 digit images (bundled, no download).

  Pixels in [0, 1], shape (n, 8, 8, 1); a fixed 60/20/20 split where the
  test fifth never depends on the seed.
  """
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top

  digits = sk_datasets.load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(y))
  num_test = len(y) // 5
  test = Split(x[order[:num_test]], y[order[:num_test]])
  rest = order[num_test:]
  train, validation = _split_off_validation(
      x[rest], y[rest], validation_fraction / 0.8, seed)
  return ArrayDataset('digits', train, validation, test, num_classes=10)


def mnist1d_arrays(**generator_args) -> dict:
  """Runs the MNIST-1D generator offline: its templates ship in the package.

  Keyword arguments override the generator's defaults (for example
  `shear_scale` or `max_translation`, to make a shifted domain). Returns the
  generator's dict with 'x', 'y', 'x_test', 'y_test'.
  """
  from mnist1d import data as mnist1d_data  # pylint: disable=g-import-not-at-top

  args = mnist1d_data.get_dataset_args()
  for key, value in generator_args.items():
    if not hasattr(args, key):
      raise DataError(f'MNIST-1D generator has no argument {key!r}.')
    setattr(args, key, value)
  return mnist1d_data.make_dataset(args)


@functools.lru_cache(maxsize=4)
def _mnist1d_cached(generator_items: tuple) -> dict:
  return mnist1d_arrays(**dict(generator_items))


def _load_mnist1d(seed: int, validation_fraction: float,
                  **generator_args) -> ArrayDataset:
  """MNIST-1D: 4,000 train and 1,000 test signals of length 40, shape (n, 40, 1)."""
  arrays = _mnist1d_cached(tuple(sorted(generator_args.items())))
  x = arrays['x'].astype(np.float32)[..., None]
  y = arrays['y'].astype(np.int32)
  train, validation = _split_off_validation(x, y, validation_fraction, seed)
  test = Split(arrays['x_test'].astype(np.float32)[..., None],
               arrays['y_test'].astype(np.int32))
  return ArrayDataset('mnist1d', train, validation, test, num_classes=10)


TFDS_NUM_CLASSES = {'mnist': 10, 'fashion_mnist': 10, 'cifar10': 10,
                    'cifar100': 100, 'svhn_cropped': 10}


def _tfds_split(name: str, split: str, data_dir: str) -> Split:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  source = tfds.data_source(name, split=split, data_dir=data_dir,
                            download=False)
  records = [source[i] for i in range(len(source))]
  x = np.stack([r['image'] for r in records]).astype(np.float32) / 255.0
  y = np.asarray([r['label'] for r in records], np.int32)
  return Split(x, y)


def _load_tfds(name: str, data_dir: str | None, seed: int,
               validation_fraction: float) -> ArrayDataset:
  """A TFDS image dataset from a local data_dir, in array_record format."""
  how_to = (
      f'Prepare it on a machine with network access with\n'
      f'  tfds build {name} --file_format=array_record --data_dir=DIR\n'
      f'then copy DIR here and pass --config.data_dir=DIR (or set '
      f'TFDS_DATA_DIR).')
  data_dir = data_dir or os.environ.get('TFDS_DATA_DIR')
  if not data_dir:
    raise DataError(f'Dataset {name!r} is read from a local TFDS data_dir, '
                    f'and none was given. {how_to}')
  if not os.path.isdir(os.path.join(data_dir, name)):
    raise DataError(f'Dataset {name!r} was not found under data_dir='
                    f'{data_dir!r}. {how_to}')
  try:
    train_all = _tfds_split(name, 'train', data_dir)
    test = _tfds_split(name, 'test', data_dir)
  except Exception as error:  # TFDS raises many kinds for a bad folder.
    raise DataError(f'Could not read {name!r} from {data_dir!r}: {error}. '
                    f'{how_to}') from error
  train, validation = _split_off_validation(
      train_all.x, train_all.y, validation_fraction, seed)
  return ArrayDataset(name, train, validation, test,
                      num_classes=TFDS_NUM_CLASSES.get(
                          name, int(train_all.y.max()) + 1))


ARRAY_DATASETS = ('digits', 'mnist1d', *TFDS_NUM_CLASSES)


def load(name: str, *, data_dir: str | None = None, seed: int = 0,
         validation_fraction: float = 0.1, **generator_args) -> ArrayDataset:
  """Loads an array dataset by name, with train / validation / test splits.

  Args:
    name: 'digits', 'mnist1d', or a TFDS name such as 'mnist' or 'cifar10'.
    data_dir: local TFDS folder; needed for TFDS names only.
    seed: picks which training examples go to validation.
    validation_fraction: share of the training examples held out.
    **generator_args: MNIST-1D generator overrides (a shifted domain).
  """
  if not 0.0 <= validation_fraction < 1.0:
    raise DataError(f'validation_fraction={validation_fraction} must be in '
                    '[0, 1).')
  if name == 'digits':
    return _load_digits(seed, validation_fraction)
  if name == 'mnist1d':
    return _load_mnist1d(seed, validation_fraction, **generator_args)
  if name in TFDS_NUM_CLASSES:
    return _load_tfds(name, data_dir, seed, validation_fraction)
  raise DataError(f'Unknown dataset {name!r}; choose one of '
                  f'{list(ARRAY_DATASETS)} (TFDS names read from a local '
                  'data_dir).')


# ---------------------------------------------------------------------------
# Batching.


def batch_indices(key: jax.Array, step: jax.Array, num_examples: int,
                  batch_size: int) -> jax.Array:
  """Indices of the batch at `step`, shape (batch_size,); traceable.

  Each epoch is a fresh permutation drawn from fold_in(key, epoch); the last
  incomplete batch of an epoch is dropped. The batch depends only on (key,
  step), so a resumed run sees exactly the batches it would have seen.
  """
  if batch_size > num_examples:
    raise DataError(f'batch_size={batch_size} exceeds the {num_examples} '
                    'training examples; lower --config.train.batch_size.')
  steps_per_epoch = num_examples // batch_size
  epoch, position = jnp.divmod(step, steps_per_epoch)
  order = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
  return jax.lax.dynamic_slice(order, (position * batch_size,), (batch_size,))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return max(1, num_examples // batch_size)


def epochs_to_steps(epochs: float, num_examples: int, batch_size: int) -> int:
  return int(math.ceil(epochs * steps_per_epoch(num_examples, batch_size)))
