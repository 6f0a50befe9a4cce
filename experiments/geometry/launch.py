"""Launches a geometry sweep through the shared app.

    python experiments/geometry/launch.py \
        --config=experiments/geometry/configs/mlp.py --workdir=runs/geometry
"""

from common import app

if __name__ == '__main__':
  app.run()
