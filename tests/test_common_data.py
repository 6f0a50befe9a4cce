"""The shared data layer: samplers, splits, batching, TFDS errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import data


@pytest.mark.parametrize('name', sorted(data.DISTRIBUTIONS))
def test_distributions_are_seeded_2d_samplers(name):
  sample = data.distribution(name)
  a = sample(jax.random.PRNGKey(0), 37)
  b = sample(jax.random.PRNGKey(0), 37)
  assert a.shape == (37, 2)
  np.testing.assert_array_equal(a, b)
  assert np.all(np.isfinite(a))


def test_8gaussians_follows_the_reference_definition():
  x = np.asarray(data.sample_8gaussians(jax.random.PRNGKey(1), 40000))
  radius = np.linalg.norm(x, axis=1)
  assert np.median(radius) == pytest.approx(5.0, abs=0.1)
  # Per-coordinate spread around a centre: sqrt(sqrt(0.1)) ~= 0.562.
  angles = np.round(np.arctan2(x[:, 1], x[:, 0]) / (np.pi / 4)) * np.pi / 4
  centers = 5 * np.stack([np.cos(angles), np.sin(angles)], 1)
  assert np.std(x - centers) == pytest.approx(0.1 ** 0.25, rel=0.05)


def test_moons_match_scikit_learn_in_distribution():
  from sklearn import datasets as sk_datasets
  ours = np.asarray(data.sample_moons(jax.random.PRNGKey(2), 20000))
  theirs, _ = sk_datasets.make_moons(20000, noise=0.2, random_state=0)
  theirs = 3 * theirs - 1
  np.testing.assert_allclose(ours.mean(0), theirs.mean(0), atol=0.05)
  np.testing.assert_allclose(np.cov(ours.T), np.cov(theirs.T), atol=0.1)


def test_unknown_names_are_clear_errors():
  with pytest.raises(data.DataError, match='spiral'):
    data.distribution('spiral')
  with pytest.raises(data.DataError, match='imagenet_v9'):
    data.load('imagenet_v9')


def test_digits_splits_are_disjoint_and_cover_everything():
  dataset = data.load('digits', seed=3)
  assert dataset.example_shape == (8, 8, 1)
  assert dataset.num_classes == 10
  sizes = [len(s) for s in (dataset.train, dataset.validation, dataset.test)]
  assert sum(sizes) == 1797
  rows = lambda split: {x.tobytes() for x in split.x}
  assert not rows(dataset.train) & rows(dataset.test)
  # The test split does not depend on the seed.
  other = data.load('digits', seed=4)
  np.testing.assert_array_equal(dataset.test.x, other.test.x)


def test_mnist1d_comes_from_its_offline_generator():
  dataset = data.load('mnist1d', validation_fraction=0.25)
  assert dataset.example_shape == (40, 1)
  assert len(dataset.train) == 3000 and len(dataset.validation) == 1000
  assert len(dataset.test) == 1000
  assert set(np.unique(dataset.train.y)) == set(range(10))


def test_batch_indices_are_epoch_permutations():
  key = jax.random.PRNGKey(0)
  n, batch = 23, 5  # 4 batches per epoch, 3 examples dropped.
  epoch0 = np.concatenate([data.batch_indices(key, s, n, batch)
                           for s in range(4)])
  assert len(set(epoch0.tolist())) == 20
  again = jax.jit(data.batch_indices, static_argnums=(2, 3))(key, 2, n, batch)
  np.testing.assert_array_equal(again, epoch0[10:15])
  epoch1 = np.concatenate([data.batch_indices(key, s, n, batch)
                           for s in range(4, 8)])
  assert not np.array_equal(epoch0, epoch1)


def test_batch_larger_than_dataset_is_a_clear_error():
  with pytest.raises(data.DataError, match='batch_size'):
    data.batch_indices(jax.random.PRNGKey(0), jnp.int32(0), 10, 11)


def test_missing_tfds_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(data.DataError, match='tfds build cifar10'):
    data.load('cifar10', data_dir=str(tmp_path))


def test_tfds_dataset_loads_from_a_local_data_dir(tmp_path):
  import tensorflow_datasets as tfds
  (tmp_path / 'mnist').mkdir()
  with tfds.testing.mock_data(num_examples=12):
    dataset = data.load('mnist', data_dir=str(tmp_path),
                        validation_fraction=0.25)
  assert dataset.train.x.shape[1:] == (28, 28, 1)
  assert len(dataset.train) == 9 and len(dataset.validation) == 3
  assert dataset.train.x.max() <= 1.0
