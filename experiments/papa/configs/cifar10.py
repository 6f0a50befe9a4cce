"""PAPA on CIFAR10: populations of P = 5 ResNet-20s with BatchNorm.

    python experiments/papa/launch.py \
        --config=experiments/papa/configs/cifar10.py --workdir=runs/papa_cifar10 \
        --config.data_dir=/path/to/tensorflow_datasets

Reads TFDS 'cifar10' from a local data_dir (prepared offline with
`tfds build cifar10 --file_format=array_record`); nothing is downloaded. Meant
for a GPU: on CPU vmapped convolutions are slow. Follows the paper's CIFAR
recipe in spirit: SGD with Nesterov momentum, cosine schedule, PAPA's pull
a = 0.99 every k = 10 steps, PAPA-all / PAPA-2 every 5 epochs.
Tiny variant: `--config=experiments/papa/configs/cifar10.py:tiny`.
"""

from papa import experiment


def get_config(variant: str = ''):
  config = experiment.base_config()
  config.name = 'papa_cifar10'
  config.dataset = 'cifar10'
  config.validation_fraction = 0.04
  config.model.name = 'resnet20'
  config.model.widths = (16,)
  config.population.seeds = 1
  config.epochs = 200.0
  config.train.batch_size = 64
  config.train.learning_rate = 0.05
  config.train.log_every = 500
  config.train.checkpoint_every = 5000
  config.optimizer.name = 'sgd'
  config.optimizer.weight_decay = 5e-4
  config.papa.auto = False
  config.papa.a = 0.99
  config.papa.every = 10
  config.papa.every_epochs = 5.0
  config.eval_every = 5000
  if variant == 'tiny':
    experiment.make_tiny(config)
  elif variant:
    raise ValueError(f'Unknown variant {variant!r}; use "" or "tiny".')
  return config
