"""The settings every flow-matching config starts from.

Defaults follow the paper's 2-D experiments: a 3 x 64 SELU MLP, Adam at
1e-3, batch 256, sigma = 0.1, 20,000 steps, Dopri5 at rtol = atol = 1e-4
for evaluation. Each task file picks the source and target.
"""

import ml_collections

from common import config as config_lib


def make_config(source: str, target: str, variant: str = '',
                class_conditional: bool = False) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.line = 'cfm'
  config.name = f'cfm_{source}_to_{target}'
  config.seed = 0

  # One of icfm, otcfm, sbcfm, target, vp, sf2m (cfm/methods.py).
  config.method = 'otcfm'
  config.sigma = 0.1
  # '' keeps the method's own coupling; or independent, exact,
  # exact_resample, entropic, unbalanced, partial.
  config.coupling = ''
  # Entropic regularisation; 0 means the method's default (2 sigma^2 for
  # sbcfm and sf2m, 0.05 otherwise).
  config.epsilon = 0.0
  config.marginal_penalty = 1.0
  config.mass = 0.9

  config.source = source
  config.target = target
  config.class_conditional = class_conditional

  config.model = ml_collections.ConfigDict(dict(width=64, depth=3))
  config.train = config_lib.training_defaults()
  config.train.num_steps = 20_000
  config.train.log_every = 1000
  config.train.checkpoint_every = 5000

  config.eval = ml_collections.ConfigDict(dict(
      num_samples=2000, solver='dopri5', rtol=1e-4, atol=1e-4,
      euler_steps=100, num_saved=11))

  if variant == 'tiny':
    config.train.num_steps = 200
    config.train.log_every = 100
    config.train.checkpoint_every = 100
    config.eval.num_samples = 256
  elif variant:
    raise ValueError(f"Unknown config variant {variant!r}; use '' or 'tiny'.")
  return config
