"""Runs every line's benchmark, one after the other (`make bench`).

    .venv/bin/python -m benchmarks.run_all [cfm papa ...]

Each `benchmarks/<line>_bench.py` has a `main()` that prints its own ratio
table, measured side by side within that one run. With names, only those
run. A line whose benchmark file is absent is skipped with a note; one that
fails is reported and the others still run (the exit status is then 1).
"""

import glob
import importlib
import os
import sys
import time
import traceback

LINES = ('cfm', 'papa', 'pda', 'geometry')


def _available() -> list[str]:
  here = os.path.dirname(os.path.abspath(__file__))
  found = sorted(os.path.basename(path)[:-len('_bench.py')]
                 for path in glob.glob(os.path.join(here, '*_bench.py')))
  return list(LINES) + [name for name in found if name not in LINES]


def main(argv=()) -> int:
  names = list(argv) or _available()
  failed = []
  for name in names:
    module_name = f'benchmarks.{name}_bench'
    print(f'\n=== {name} ({module_name}) ===', flush=True)
    try:
      module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
      if error.name != module_name:
        raise
      print(f'skipped: benchmarks/{name}_bench.py does not exist.')
      continue

    tick = time.perf_counter()
    try:
      module.main()
    except Exception:  # pylint: disable=broad-except
      # One broken benchmark should not hide the others' tables.
      traceback.print_exc()
      failed.append(name)
    print(f'=== {name}: {time.perf_counter() - tick:.0f} s ===', flush=True)

  if failed:
    print(f'\nFailed: {", ".join(failed)}', file=sys.stderr)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
