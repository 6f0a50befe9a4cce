"""Partial domain adaptation tasks: source with K classes, target with fewer.

A `Task` holds a labelled source domain (train / validation split, used for
training and for the source-accuracy and DEV selection scores) and a target
domain restricted to a subset of the source classes. Target labels are used
only by the label-based selection strategies (1-shot, 100 random) and by the
oracle; as in the benchmark, target accuracy is measured on the whole target
set (the transductive protocol of PDA).

Tasks:
* `digits_task`: scikit-learn's digits, split into two disjoint halves; the
  source is one half with all 10 classes, the target the other half with the
  first `num_target_classes` classes, rotated (the domain shift).
* `mnist1d_task`: MNIST-1D source from the default generator, target from a
  shifted generator (other seed, shear, noise), restricted to 5 classes.
* `office_home_task` (65 -> 25 classes), `visda_task` (12 -> 6) from their
  image-folder layout, `domainnet_task` through TFDS; the backbone features
  come from a `.npz` features file per domain, or from a flax backbone and its
  pretrained parameters file supplied by the user.
"""

import dataclasses
import os
from typing import Sequence

import numpy as np

from common import data as common_data

DataError = common_data.DataError
Split = common_data.Split


@dataclasses.dataclass(frozen=True)
class Task:
  """One PDA task.

  Attributes:
    name: a label for tables.
    source_train: labelled source examples used for training, x (n, ...).
    source_val: held-out labelled source examples (source accuracy, DEV).
    target: target examples; labels only for selection by labels / oracle.
    num_classes: number of source classes K (labels in [0, K)).
    target_classes: the classes present in the target, sorted.
    one_shot: indices into `target`, one example per target class.
    random_100: indices into `target`, 100 random examples (or all if fewer).
  """
  name: str
  source_train: Split
  source_val: Split
  target: Split
  num_classes: int
  target_classes: tuple
  one_shot: np.ndarray
  random_100: np.ndarray

  @property
  def example_shape(self) -> tuple:
    return tuple(self.source_train.x.shape[1:])


def make_task(name: str, source: Split, target: Split, num_classes: int,
              target_classes: Sequence[int], *, seed: int = 0,
              validation_fraction: float = 0.2) -> Task:
  """Builds a task: checks the inputs, restricts the target, splits source.

  Args:
    name: label of the task.
    source: all labelled source examples, x (n_s, *shape), y (n_s,).
    target: target examples, x (n_t, *shape), y (n_t,); examples of classes
      outside `target_classes` are dropped.
    num_classes: K; every class in [0, K) must have source examples.
    target_classes: the target's classes, a subset of [0, K).
    seed: draws the source validation split and the labelled target subsets.
    validation_fraction: share of each source class held out for validation.

  Raises:
    DataError: a target class outside the source classes, a source class
      without examples, a target class without examples, or source and
      target examples of different shapes.
  """
  target_classes = tuple(sorted(int(c) for c in target_classes))
  _check_inputs(source, target, num_classes, target_classes)
  rng = np.random.default_rng(seed)

  # Target restricted to its classes.
  target = target.select(np.isin(target.y, target_classes))
  missing = [c for c in target_classes if not np.any(target.y == c)]
  if missing:
    raise DataError(f'Target classes {missing} of task {name!r} have no '
                    'target examples; drop them from target_classes.')

  # Stratified source split, so that every class is in both parts.
  val_idx = []
  for c in range(num_classes):
    members = rng.permutation(np.flatnonzero(source.y == c))
    val_idx.extend(members[:int(round(validation_fraction * len(members)))])
  is_val = np.zeros(len(source), bool)
  is_val[np.asarray(val_idx, int)] = True

  # Labelled target subsets of the label-based selection strategies.
  one_shot = np.asarray([rng.choice(np.flatnonzero(target.y == c))
                         for c in target_classes])
  random_100 = np.sort(rng.permutation(len(target))[:100])
  return Task(name, source.select(~is_val), source.select(is_val), target,
              num_classes, target_classes, one_shot, random_100)


def _check_inputs(source: Split, target: Split, num_classes: int,
                  target_classes: tuple) -> None:
  if source.x.shape[1:] != target.x.shape[1:]:
    raise DataError(
        f'Source examples have shape {source.x.shape[1:]} but target '
        f'examples {target.x.shape[1:]}: both domains must go through the '
        'same feature extractor (same image size or feature dimension).')
  if len(source) == 0 or len(target) == 0:
    raise DataError(f'Empty domain: {len(source)} source and {len(target)} '
                    'target examples.')
  outside = [c for c in target_classes if not 0 <= c < num_classes]
  if outside or not target_classes:
    raise DataError(
        f'Target classes {outside or "(none)"} are not source classes '
        f'[0, {num_classes}): in partial domain adaptation the target '
        'classes are a non-empty subset of the source classes.')
  stray = sorted(set(np.unique(source.y).tolist()) - set(range(num_classes)))
  if stray:
    raise DataError(f'Source labels {stray} fall outside [0, {num_classes}).')
  counts = np.bincount(source.y, minlength=num_classes)
  if np.any(counts < 2):
    raise DataError(
        f'Source classes {np.flatnonzero(counts < 2).tolist()} have fewer '
        'than 2 examples (one for training, one for validation); every '
        'source class needs examples.')
  for split, label in ((source, 'source'), (target, 'target')):
    if not np.all(np.isfinite(split.x)):
      raise DataError(f'The {label} examples contain NaN or inf.')


# ---------------------------------------------------------------------------
# Embedded tasks.


def rotate_images(x: np.ndarray, degrees: float) -> np.ndarray:
  """Rotates images (n, h, w, c) about their centre, bilinear, zero fill."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top

  return ndimage.rotate(x, degrees, axes=(1, 2), reshape=False, order=1,
                        mode='constant').astype(np.float32)


def digits_task(*, rotation: float = 30.0, num_target_classes: int = 5,
                seed: int = 0) -> Task:
  """Digits: source = one half (10 classes), target = other half rotated.

  The 1,797 images are split into two disjoint halves by a fixed
  permutation (independent of `seed`, so every run sees the same domains).
  """
  loaded = common_data.load('digits', validation_fraction=0.2)
  x = np.concatenate([loaded.train.x, loaded.validation.x, loaded.test.x])
  y = np.concatenate([loaded.train.y, loaded.validation.y, loaded.test.y])
  order = np.random.default_rng(1234).permutation(len(y))
  half = len(y) // 2
  source = Split(x[order[:half]], y[order[:half]])
  target = Split(rotate_images(x[order[half:]], rotation), y[order[half:]])
  return make_task(f'digits(rot{rotation:g})', source, target, 10,
                   range(num_target_classes), seed=seed)


MNIST1D_TARGET_SHIFT = {'seed': 7, 'shear_scale': 1.5,
                        'corr_noise_scale': 0.5, 'scale_coeff': 0.6}


def mnist1d_task(*, target_generator_args: dict | None = None,
                 num_target_classes: int = 5, seed: int = 0) -> Task:
  """MNIST-1D: default generator -> shifted generator (5 classes).

  The source is the default generator's 4,000 training signals; the target
  is the training set of a generator with another seed and the shift in
  `target_generator_args` (defaults: MNIST1D_TARGET_SHIFT), so the two
  domains share no signal.
  """
  shift = dict(MNIST1D_TARGET_SHIFT if target_generator_args is None
               else target_generator_args)
  shift.setdefault('seed', MNIST1D_TARGET_SHIFT['seed'])
  source = common_data.load('mnist1d', validation_fraction=0.0).train
  target = common_data.load('mnist1d', validation_fraction=0.0,
                            **shift).train
  return make_task('mnist1d(shift)', source, target, 10,
                   range(num_target_classes), seed=seed)


# ---------------------------------------------------------------------------
# Real benchmarks: images or features on disk.

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')


def class_folders(domain_dir: str) -> list[str]:
  """Class folder names of an image-folder domain, sorted."""
  if not os.path.isdir(domain_dir):
    raise DataError(f'Image folder {domain_dir!r} does not exist: expected '
                    'ROOT/<domain>/<class>/<image files>.')
  names = sorted(d for d in os.listdir(domain_dir)
                 if os.path.isdir(os.path.join(domain_dir, d)))
  if not names:
    raise DataError(f'Image folder {domain_dir!r} has no class folders.')
  return names


def load_image_folder(domain_dir: str, class_names: Sequence[str],
                      image_size: int) -> Split:
  """Reads ROOT/<domain>/<class>/*.jpg into x (n, s, s, 3) in [0, 1].

  Labels follow the order of `class_names`; folders of other classes are
  ignored, and a listed class folder that is missing is an error.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  xs, ys = [], []
  for label, name in enumerate(class_names):
    folder = os.path.join(domain_dir, name)
    if not os.path.isdir(folder):
      raise DataError(f'Class folder {folder!r} is missing.')
    for file in sorted(os.listdir(folder)):
      if file.lower().endswith(IMAGE_SUFFIXES):
        with Image.open(os.path.join(folder, file)) as image:
          image = image.convert('RGB').resize((image_size, image_size))
          xs.append(np.asarray(image, np.float32) / 255.0)
          ys.append(label)
  if not xs:
    raise DataError(f'No images found under {domain_dir!r}.')
  return Split(np.stack(xs), np.asarray(ys, np.int32))


def load_features_file(path: str) -> Split:
  """Reads backbone features from a .npz with 'features' (n, d), 'labels' (n,).
  """
  if not os.path.isfile(path):
    raise DataError(f'Features file {path!r} does not exist; write one with '
                    "np.savez(path, features=(n, d) array, labels=(n,) ints).")
  with np.load(path) as arrays:
    for key in ('features', 'labels'):
      if key not in arrays:
        raise DataError(f'Features file {path!r} has no {key!r} array '
                        f'(found {sorted(arrays.files)}).')
    x = arrays['features'].astype(np.float32)
    y = arrays['labels'].astype(np.int32)
  if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
    raise DataError(f'Features file {path!r}: features must be (n, d) and '
                    f'labels (n,), got {x.shape} and {y.shape}.')
  return Split(x, y)


def backbone_features(images: np.ndarray, backbone, checkpoint: str, *,
                      batch_size: int = 64) -> np.ndarray:
  """Features (n, d) of images under a pretrained flax backbone.

  Args:
    images: (n, h, w, c) floats.
    backbone: a flax module mapping a batch of images to (batch, d).
    checkpoint: file of its parameters, as written by
      `flax.serialization.to_bytes(params)`.
    batch_size: images per forward pass.
  """
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  if backbone is None:
    raise DataError('Computing features needs the backbone module; pass '
                    'backbone= (or give a features file instead).')
  if not checkpoint or not os.path.isfile(checkpoint):
    raise DataError(f'Backbone checkpoint {checkpoint!r} does not exist; '
                    'pass the file of the pretrained parameters, or a '
                    'features file instead.')
  template = backbone.init(jax.random.PRNGKey(0), images[:1])
  with open(checkpoint, 'rb') as f:
    try:
      params = flax.serialization.from_bytes(template, f.read())
    except Exception as error:  # msgpack / structure errors vary.
      raise DataError(f'Backbone checkpoint {checkpoint!r} does not match '
                      f'the backbone module: {error}') from error
  apply = jax.jit(backbone.apply)
  chunks = [np.asarray(apply(params, images[i:i + batch_size]))
            for i in range(0, len(images), batch_size)]
  return np.concatenate(chunks).reshape(len(images), -1)


def _domain_split(root, domain, class_names, features_dir, backbone,
                  checkpoint, image_size) -> Split:
  if features_dir is not None:
    return load_features_file(os.path.join(features_dir, f'{domain}.npz'))
  if root is None:
    raise DataError('Give either features_dir (a .npz per domain) or the '
                    'image root together with backbone and checkpoint.')
  images = load_image_folder(os.path.join(root, domain), class_names,
                             image_size)
  return Split(backbone_features(images.x, backbone, checkpoint), images.y)


def folder_benchmark_task(name: str, *, source: str, target: str,
                          num_classes: int, num_target_classes: int,
                          root: str | None = None,
                          features_dir: str | None = None, backbone=None,
                          checkpoint: str | None = None,
                          image_size: int = 224, seed: int = 0) -> Task:
  """A benchmark in the image-folder layout ROOT/<domain>/<class>/...

  Classes are the sorted class folders of the source domain (or labels
  [0, K) of the features file); the target keeps the first
  `num_target_classes` of them, as in the PDA literature.
  """
  class_names = None
  if features_dir is None and root is not None:
    class_names = class_folders(os.path.join(root, source))
    if len(class_names) != num_classes:
      raise DataError(f'{name}: {os.path.join(root, source)!r} has '
                      f'{len(class_names)} class folders, expected '
                      f'{num_classes}.')
  split_args = (features_dir, backbone, checkpoint, image_size)
  source_split = _domain_split(root, source, class_names, *split_args)
  target_split = _domain_split(root, target, class_names, *split_args)
  return make_task(f'{name}:{source}->{target}', source_split, target_split,
                   num_classes, range(num_target_classes), seed=seed)


def office_home_task(source: str = 'Art', target: str = 'Clipart',
                     **kwargs) -> Task:
  """Office-Home, 65 source classes -> the first 25 (alphabetical)."""
  return folder_benchmark_task('office_home', source=source, target=target,
                               num_classes=65, num_target_classes=25,
                               **kwargs)


def visda_task(source: str = 'train', target: str = 'validation',
               **kwargs) -> Task:
  """VisDA-2017: synthetic 'train' (12 classes) -> real 'validation' (6)."""
  return folder_benchmark_task('visda', source=source, target=target,
                               num_classes=12, num_target_classes=6, **kwargs)


def domainnet_task(source: str = 'real', target: str = 'sketch', *,
                   data_dir: str | None = None, backbone=None,
                   checkpoint: str | None = None,
                   features_dir: str | None = None, num_classes: int = 126,
                   num_target_classes: int = 40, image_size: int = 224,
                   seed: int = 0) -> Task:
  """DomainNet from a local TFDS data_dir ('domainnet/<domain>').

  Keeps labels [0, num_classes) in the source and the first
  `num_target_classes` in the target (the benchmark's 126 -> 40 split uses a
  fixed class list; here the first labels in TFDS order stand in for it).
  """
  def split(domain):
    if features_dir is not None:
      return load_features_file(os.path.join(features_dir, f'{domain}.npz'))
    name = f'domainnet/{domain}'
    if not data_dir or not os.path.isdir(os.path.join(data_dir, 'domainnet')):
      raise DataError(f'DomainNet is read from a local TFDS data_dir with '
                      f'{name!r} prepared; data_dir={data_dir!r} has none. '
                      'Build it elsewhere with `tfds build domainnet` and '
                      'copy it here, or pass features_dir.')
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    source_ = tfds.data_source(name, split='train', data_dir=data_dir,
                               download=False)
    images, labels = [], []
    for i in range(len(source_)):
      record = source_[i]
      if record['label'] < num_classes:
        images.append(_resize(record['image'], image_size))
        labels.append(record['label'])
    x = backbone_features(np.stack(images), backbone, checkpoint)
    return Split(x, np.asarray(labels, np.int32))

  source_split, target_split = split(source), split(target)
  keep = source_split.y < num_classes
  return make_task(f'domainnet:{source}->{target}', source_split.select(keep),
                   target_split, num_classes, range(num_target_classes),
                   seed=seed)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  resized = Image.fromarray(np.asarray(image)).convert('RGB').resize(
      (size, size))
  return np.asarray(resized, np.float32) / 255.0


TASKS = {'digits': digits_task, 'mnist1d': mnist1d_task,
         'office_home': office_home_task, 'visda': visda_task,
         'domainnet': domainnet_task}


def task(name: str, **kwargs) -> Task:
  """A task by name ('digits', 'mnist1d', 'office_home', 'visda',
  'domainnet'); kwargs go to its builder."""
  if name not in TASKS:
    raise DataError(f'Unknown PDA task {name!r}; choose one of '
                    f'{sorted(TASKS)}.')
  return TASKS[name](**kwargs)
