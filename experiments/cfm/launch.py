"""Launches one flow-matching run; see experiments/cfm/configs/ for tasks.

    python -m experiments.cfm.launch \
        --config=experiments/cfm/configs/gaussians_to_moons.py \
        --workdir=runs/cfm/otcfm --config.method=otcfm
"""

from common import app

if __name__ == '__main__':
  app.run()
