"""PAPA on scikit-learn's 8x8 digits: populations of P = 5 small 2-D CNNs.

    python experiments/papa/launch.py \
        --config=experiments/papa/configs/digits.py --workdir=runs/papa_digits

Tiny variant: `--config=experiments/papa/configs/digits.py:tiny`. On CPU
prefer `--config.model.name=mlp`: vmapped convolutions lower to grouped
convolutions, which XLA:CPU runs slowly.
"""

from papa import experiment


def get_config(variant: str = ''):
  config = experiment.base_config()
  config.name = 'papa_digits'
  config.dataset = 'digits'
  config.validation_fraction = 0.2
  config.model.name = 'cnn'
  config.model.widths = (16, 32)
  config.epochs = 40.0
  config.train.batch_size = 64
  config.train.learning_rate = 3e-3
  config.train.log_every = 50
  config.eval_every = 100
  if variant == 'tiny':
    experiment.make_tiny(config)
    config.model.name = 'mlp'
  elif variant:
    raise ValueError(f'Unknown variant {variant!r}; use "" or "tiny".')
  return config
