"""PDA benchmark: training steps/s per method on digits, and one jitted
population program against the same grid run point by point.

    python -m benchmarks.pda_bench
"""

import time

from common import report
from pda import data
from pda import methods
from pda import protocol

STEPS = 200


def _spec(task):
  return methods.Spec(num_classes=task.num_classes, num_steps=STEPS,
                      interval=STEPS // 2, critic_steps=20)


def main():
  task = data.digits_task()
  spec = _spec(task)

  # Steps/s of each method, one grid point and one seed.
  rows = []
  for name in methods.METHODS:
    m = methods.method(name)
    point = protocol.expand_grid(m.grid, m.fixed, max_points=1)[:1]
    run = protocol.run_method(name, task, spec, point, [0])
    rows.append((name, run.steps_per_second))
  print(report.console_table(('method', 'steps/s (1 member)'), rows))

  # A 4-point x 2-seed grid of MPOT: one vmapped program vs point by point.
  m = methods.method('mpot')
  points = protocol.expand_grid(m.grid, m.fixed, max_points=4, seed=1)
  tick = time.perf_counter()
  protocol.run_method('mpot', task, spec, points, [0, 1])
  together = time.perf_counter() - tick
  tick = time.perf_counter()
  for point in points:
    for seed in (0, 1):
      protocol.run_method('mpot', task, spec, [point], [seed])
  apart = time.perf_counter() - tick
  print(report.console_table(
      ('mpot grid (4 points x 2 seeds)', 'seconds', 'ratio'),
      [('one jitted program', together, 1.0),
       ('point by point', apart, apart / together)]))


if __name__ == '__main__':
  main()
