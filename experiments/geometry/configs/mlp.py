"""RSI / EB along the training paths of an MLP classifier, as a sweep.

    python -m common.app --config=experiments/geometry/configs/mlp.py \
        --workdir=runs/geometry_mlp \
        --config.sweep.batch_sizes=16,64,256 --config.sweep.optimizers=sgd,adam

Every point of the sweep (batch size x optimizer x schedule x width) trains
`num_seeds` seeds vmapped as one program, twice: the first pass gives w*, the
second replays it bit for bit and measures every step. The tiny variant
(`--config=experiments/geometry/configs/mlp.py:tiny`) finishes in seconds.
"""

import ml_collections

from common import config as config_lib


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.line = 'geometry'
  config.name = 'geometry_mlp'
  config.seed = 0
  config.num_seeds = 3
  config.dataset = 'mnist1d'
  config.data_dir = ''

  config.train = config_lib.training_defaults()
  config.train.num_steps = 1000
  config.train.learning_rate = 0.05
  config.train.checkpoint_every = 0

  config.model = ml_collections.ConfigDict(dict(depth=2))

  # Comma-separated lists; one run of num_seeds seeds per combination.
  config.sweep = ml_collections.ConfigDict(dict(
      batch_sizes='16,64,256', optimizers='sgd', schedules='constant',
      widths='64'))

  # Fixed probe batches every `every` steps; the full batch once an epoch.
  config.probe = ml_collections.ConfigDict(dict(
      every=40, num_batches=4, batch_size=256, full_batch=True))
  config.controls = 'doubled,other_seed,random'

  if variant == 'tiny':
    config.num_seeds = 2
    config.train.num_steps = 40
    config.sweep.batch_sizes = '16'
    config.sweep.widths = '16'
    config.probe.every = 10
    config.probe.batch_size = 32
    config.probe.num_batches = 1
  elif variant:
    raise ValueError(f"Unknown variant {variant!r}; use '' or 'tiny'.")
  return config
