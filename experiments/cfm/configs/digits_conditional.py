"""Class-conditional generation of scikit-learn's 8x8 digits from N(0, I).

    python -m experiments.cfm.launch \
        --config=experiments/cfm/configs/digits_conditional.py \
        --workdir=runs/cfm/digits --config.method=otcfm

The label of each target image travels through the coupling and conditions
the vector field. Seconds-long variant: append `:tiny` to the config path.
"""

from experiments.cfm.configs import base


def get_config(variant: str = ''):
  config = base.make_config(source='normal', target='digits', variant=variant,
                            class_conditional=True)
  config.model.width = 256
  config.train.batch_size = 128
  if not variant:
    config.train.num_steps = 10_000
  return config
