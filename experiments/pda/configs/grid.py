"""The PDA protocol: methods x grid x seeds x tasks -> selection table.

    python experiments/pda/launch.py --config=experiments/pda/configs/grid.py \
        --workdir=runs/pda_grid [--config.tasks=digits,mnist1d]

Real benchmarks read backbone features from a .npz per domain:

    ... --config.tasks=office_home --config.data.features_dir=DIR \
        --config.data.source=Art --config.data.target=Clipart

Variants: ':tiny' (seconds, a smoke test), ':main' (the reduced grid of the
main report).
"""

import ml_collections

from common import config as config_lib


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.line = 'pda'
  config.name = 'pda_grid'
  config.mode = 'grid'
  config.tasks = 'digits'
  config.methods = 'source_only,pada,safn,ba3us,ar,jumbot,mpot'
  config.grid = 'full'
  # 0 runs every grid point; N > 0 a random subset of N per method.
  config.max_grid_points = 0
  config.num_seeds = 3
  config.seed = 0
  config.hp = ''
  # Threads training (task, method) pairs at once; 0: one per CPU core.
  config.num_workers = 0

  config.data = ml_collections.ConfigDict(dict(
      rotation=30.0, root='', features_dir='', source='', target=''))
  config.model = ml_collections.ConfigDict(dict(
      widths=(128,), bottleneck_dim=32, conv=False, critic_steps=200))

  config.train = config_lib.training_defaults()
  config.train.num_steps = 600
  config.train.batch_size = 40
  config.train.learning_rate = 0.02
  # The checkpoint interval: selection scores, weight refreshes.
  config.train.log_every = 100
  config.train.checkpoint_every = 0

  if variant == 'main':
    config.grid = 'reduced'
    # The benchmark's 3 seeds; about 1 minute on 2 CPU cores (half of it
    # compilation), well inside the 3 minutes of the main report.
    config.num_seeds = 3
    config.train.num_steps = 600
    config.model.critic_steps = 100
  elif variant == 'tiny':
    config.grid = 'reduced'
    config.max_grid_points = 1
    config.num_seeds = 1
    config.train.num_steps = 20
    config.train.log_every = 10
    config.model.critic_steps = 5
  elif variant:
    raise ValueError(f'Unknown variant {variant!r}; use "", "main" or '
                     '"tiny".')
  return config
