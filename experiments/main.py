"""The main job behind `make run`: every line's headline experiment.

    python -m experiments.main --workdir=runs/main [--lines=cfm,papa] [--tiny]

Each line's `experiment.main_section(workdir, tiny)` trains and evaluates on
embedded data and returns a `common.report.Section`. This script gathers them
into runs/main/results.json (one top-level key per line) and
runs/main/report.md, then prints each line's table.
"""

import importlib
import os
import time

from absl import app
from absl import flags
from absl import logging

from common import report

LINES = ('cfm', 'papa', 'pda', 'geometry')

_WORKDIR = flags.DEFINE_string('workdir', 'runs/main', 'Output folder.')
_LINES = flags.DEFINE_list('lines', list(LINES), 'Lines to run, in order.')
_TINY = flags.DEFINE_bool('tiny', False, 'Seconds-long variant (a smoke test).')

HEADER = """# Main report

Produced by `make run` (`python -m experiments.main`). Each section trains on
embedded data on this machine, then sets its numbers beside the published
ones, with the differences in protocol stated.
"""


def main(argv):
  del argv
  # Library INFO lines (orbax reports every save) would drown the progress.
  logging.set_verbosity(logging.WARNING)
  unknown = [line for line in _LINES.value if line not in LINES]
  if unknown:
    raise app.UsageError(f'--lines has unknown names {unknown}; choose from '
                         f'{list(LINES)}.')
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  results_path = os.path.join(workdir, 'results.json')
  report_path = os.path.join(workdir, 'report.md')

  sections = []
  for line in _LINES.value:
    module = importlib.import_module(f'{line}.experiment')
    print(f'\n=== {line} ===', flush=True)
    tick = time.perf_counter()
    section = module.main_section(os.path.join(workdir, line), _TINY.value)
    print(f'=== {line} done in {time.perf_counter() - tick:.0f} s ===',
          flush=True)
    sections.append(section)

    # Written after every line, so a long job shows its results as it goes.
    report.write_json(results_path, {s.line: s.results for s in sections})
    with open(report_path, 'w') as f:
      f.write(HEADER + '\n' + '\n\n'.join(s.markdown for s in sections)
              + '\n')

  for section in sections:
    print(f'\n{section.line}\n{section.table}')
  print(f'\nReport: {os.path.abspath(report_path)}')
  print(f'Numbers: {os.path.abspath(results_path)}')


if __name__ == '__main__':
  app.run(main)
