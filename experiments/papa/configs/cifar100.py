"""PAPA on CIFAR100: the CIFAR10 recipe (see cifar10.py) on 100 classes.

    python experiments/papa/launch.py \
        --config=experiments/papa/configs/cifar100.py --workdir=runs/papa_cifar100 \
        --config.data_dir=/path/to/tensorflow_datasets

Reads TFDS 'cifar100' from a local data_dir (prepared offline with
`tfds build cifar100 --file_format=array_record`); nothing is downloaded.
Tiny variant: `--config=experiments/papa/configs/cifar100.py:tiny`.
"""

from experiments.papa.configs import cifar10


def get_config(variant: str = ''):
  config = cifar10.get_config(variant)
  config.name = 'papa_cifar100'
  config.dataset = 'cifar100'
  return config
