"""Conditional flow matching, normal -> moons (Tong et al., Table 2).

    python -m experiments.cfm.launch \
        --config=experiments/cfm/configs/normal_to_moons.py \
        --workdir=runs/cfm/normal_to_moons --config.method=otcfm

Seconds-long variant: `--config=experiments/cfm/configs/normal_to_moons.py:tiny`.
"""

from experiments.cfm.configs import base


def get_config(variant: str = ''):
  return base.make_config(source='normal', target='moons', variant=variant)
