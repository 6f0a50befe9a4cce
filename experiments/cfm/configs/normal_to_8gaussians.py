"""Conditional flow matching, normal -> 8gaussians (Tong et al., Table 2).

    python -m experiments.cfm.launch \
        --config=experiments/cfm/configs/normal_to_8gaussians.py \
        --workdir=runs/cfm/normal_to_8gaussians --config.method=otcfm

Seconds-long variant: `--config=experiments/cfm/configs/normal_to_8gaussians.py:tiny`.
"""

from experiments.cfm.configs import base


def get_config(variant: str = ''):
  return base.make_config(source='normal', target='8gaussians', variant=variant)
