"""Conditional flow matching, 8gaussians -> moons (Tong et al., Table 2).

    python -m experiments.cfm.launch \
        --config=experiments/cfm/configs/gaussians_to_moons.py \
        --workdir=runs/cfm/8g_moons_otcfm --config.method=otcfm

Seconds-long variant: `--config=experiments/cfm/configs/gaussians_to_moons.py:tiny`.
"""

from experiments.cfm.configs import base


def get_config(variant: str = ''):
  return base.make_config(source='8gaussians', target='moons',
                          variant=variant)
