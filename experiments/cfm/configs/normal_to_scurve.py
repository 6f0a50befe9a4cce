"""Conditional flow matching, normal -> scurve (Tong et al., Table 2).

    python -m experiments.cfm.launch \
        --config=experiments/cfm/configs/normal_to_scurve.py \
        --workdir=runs/cfm/normal_to_scurve --config.method=otcfm

Seconds-long variant: `--config=experiments/cfm/configs/normal_to_scurve.py:tiny`.
"""

from experiments.cfm.configs import base


def get_config(variant: str = ''):
  return base.make_config(source='normal', target='scurve', variant=variant)
