"""Launches one PAPA experiment (all four methods) from a config file.

    python experiments/papa/launch.py \
        --config=experiments/papa/configs/mnist1d.py --workdir=runs/papa_mnist1d
"""

from common import app

if __name__ == '__main__':
  app.run()
