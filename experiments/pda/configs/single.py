"""One PDA run: a (method, hyper-parameter point, seed) on one task.

    python experiments/pda/launch.py --config=experiments/pda/configs/single.py \
        --workdir=runs/pda_mpot --config.methods=mpot \
        --config.hp='{"epsilon": 0.5, "eta_1": 0.01, "eta_2": 1.0, "mass": 0.3}'

Writes the per-checkpoint selection scores to results.json. ':tiny' runs in
seconds.
"""

import ml_collections

from experiments.pda.configs import grid


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  if variant not in ('', 'tiny'):
    raise ValueError(f"Unknown config variant {variant!r}; use '' or 'tiny'.")
  config = grid.get_config(variant)
  config.name = 'pda_single'
  config.mode = 'single'
  config.methods = 'mpot'
  config.hp = ('{"epsilon": 0.5, "eta_1": 0.01, "eta_2": 1.0, '
               '"mass": 0.3}')
  config.num_seeds = 1
  return config
