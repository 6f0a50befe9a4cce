"""PAPA on MNIST-1D: populations of P = 5 MLPs, 3 seeds, four methods.

    python experiments/papa/launch.py \
        --config=experiments/papa/configs/mnist1d.py --workdir=runs/papa_mnist1d

The tiny variant (`--config=experiments/papa/configs/mnist1d.py:tiny`)
trains a few dozen steps and finishes in seconds.
"""

from papa import experiment


def get_config(variant: str = ''):
  config = experiment.base_config()
  config.name = 'papa_mnist1d'
  config.dataset = 'mnist1d'
  config.model.name = 'mlp'
  config.model.widths = (64, 64)
  config.epochs = 20.0
  config.train.batch_size = 128
  config.train.learning_rate = 3e-3
  config.train.log_every = 100
  config.eval_every = 200
  if variant == 'tiny':
    experiment.make_tiny(config)
  elif variant:
    raise ValueError(f'Unknown variant {variant!r}; use "" or "tiny".')
  return config
