"""PDA tasks: disjoint splits, class subsets, loaders and bad inputs."""

import os

import flax
import flax.linen as nn
import jax
import numpy as np
import pytest

from pda import data


def _ids_split(n, num_classes, offset=0):
  # x encodes a unique id, so overlaps between splits are detectable.
  ids = np.arange(offset, offset + n, dtype=np.float32)
  return data.Split(ids[:, None].repeat(3, 1), np.arange(n) % num_classes)


def test_make_task_disjoint_splits_and_class_subsets():
  source = _ids_split(53, 7)
  target = _ids_split(41, 7, offset=1000)
  task = data.make_task('t', source, target, 7, [4, 1, 2], seed=3)
  train_ids = set(task.source_train.x[:, 0])
  val_ids = set(task.source_val.x[:, 0])
  assert not train_ids & val_ids
  assert len(train_ids | val_ids) == 53
  assert set(np.unique(task.source_val.y)) == set(range(7))
  assert task.target_classes == (1, 2, 4)
  assert set(np.unique(task.target.y)) == {1, 2, 4}
  assert sorted(task.target.y[task.one_shot]) == [1, 2, 4]
  assert len(task.random_100) == len(task.target) < 100


def test_digits_task_halves():
  task = data.digits_task(rotation=30.0)
  assert task.num_classes == 10 and task.target_classes == (0, 1, 2, 3, 4)
  assert len(task.source_train) + len(task.source_val) == 1797 // 2
  assert set(np.unique(task.target.y)) == set(range(5))
  assert task.example_shape == (8, 8, 1) and len(task.random_100) == 100


def test_bad_inputs_give_clear_errors():
  source, target = _ids_split(30, 5), _ids_split(20, 5, offset=100)
  with pytest.raises(data.DataError, match='not source classes'):
    data.make_task('t', source, target, 5, [1, 5])
  empty = source.select(source.y != 3)
  with pytest.raises(data.DataError, match=r'\[3\]'):
    data.make_task('t', empty, target, 5, [0, 1])
  wrong = data.Split(np.zeros((20, 4), np.float32), target.y)
  with pytest.raises(data.DataError, match='shape'):
    data.make_task('t', source, wrong, 5, [0, 1])
  with pytest.raises(data.DataError, match='no target examples'):
    data.make_task('t', source, target.select(target.y != 1), 5, [0, 1])


def test_features_file_loader(tmp_path):
  path = os.path.join(tmp_path, 'Art.npz')
  np.savez(path, features=np.ones((6, 5)), labels=np.arange(6) % 3)
  split = data.load_features_file(path)
  assert split.x.shape == (6, 5)
  with pytest.raises(data.DataError, match='Clipart.npz'):
    data.office_home_task(features_dir=str(tmp_path))
  np.savez(path, features=np.ones((6, 5, 2)), labels=np.arange(6))
  with pytest.raises(data.DataError, match=r'\(n, d\)'):
    data.load_features_file(path)


class _Backbone(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(4)(x.reshape(x.shape[0], -1))


def test_image_folder_with_backbone_checkpoint(tmp_path):
  from PIL import Image

  rng = np.random.default_rng(0)
  for domain in ('train', 'validation'):
    for c in range(12):
      folder = os.path.join(tmp_path, domain, f'class{c:02d}')
      os.makedirs(folder)
      for i in range(2):
        pixels = rng.integers(0, 255, (5, 5, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f'{i}.png'))
  backbone = _Backbone()
  params = backbone.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3)))
  checkpoint = os.path.join(tmp_path, 'backbone.msgpack')
  with open(checkpoint, 'wb') as f:
    f.write(flax.serialization.to_bytes(params))

  task = data.visda_task(root=str(tmp_path), backbone=backbone,
                         checkpoint=checkpoint, image_size=8)
  assert task.num_classes == 12 and task.target_classes == tuple(range(6))
  assert task.example_shape == (4,) and len(task.target) == 12
  with pytest.raises(data.DataError, match='missing.msgpack'):
    data.visda_task(root=str(tmp_path), backbone=backbone,
                    checkpoint=str(tmp_path / 'missing.msgpack'))
  with pytest.raises(data.DataError, match='nowhere'):
    data.office_home_task(root=str(tmp_path / 'nowhere'), backbone=backbone,
                          checkpoint=checkpoint)
  with pytest.raises(data.DataError, match='data_dir'):
    data.domainnet_task(data_dir=str(tmp_path))
