"""Launcher of the PDA line: the full grid or one (method, config, seed).

    python experiments/pda/launch.py --config=experiments/pda/configs/grid.py
    python experiments/pda/launch.py --config=experiments/pda/configs/single.py
"""

from common import app

if __name__ == '__main__':
  app.run()
