"""Collects a sweep's results into results.csv and results.md.

    python -m experiments.gather --sweep_root=runs/sweeps/cfm_tiny

One row per run: its overrides, its status (finished / started / new) and
the numbers of its results.json.
"""

from absl import app
from absl import flags

from common import report
from common import sweep

_ROOT = flags.DEFINE_string('sweep_root', None, 'Folder of the sweep.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  headers, table = sweep.gather(_ROOT.value)
  print(report.console_table(headers, table))
  paths = sweep.write_table(_ROOT.value, headers, table)
  print(f'table: {" and ".join(paths)}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['sweep_root'])
  app.run(main)
