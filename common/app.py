"""The one entry point: flags, logging, seeding, workdir, then a line's run.

    python -m common.app --config=experiments/cfm/configs/gaussians_to_moons.py \
        --workdir=runs/otcfm --config.method=otcfm

The config names its line (`config.line`); the app imports that line's
`experiment` module, which provides

    validate(config) -> None              # raises ConfigError before any work
    train_and_evaluate(config, workdir) -> dict   # JSON-ready results

Launchers in `experiments/` call `run()` and add nothing else.

Several processes (hosts) run the same command with
`--coordinator_address=host:port --num_processes=N --process_id=i`, or
inside a Slurm step / multi-host TPU slice with no extra flags
(`common.distributed`). A run stopped by SIGTERM / SIGUSR1 saves a
checkpoint and exits with status 75; the same command resumes it.
"""

import importlib
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from common import config as config_lib
from common import data as data_lib
from common import distributed
from common import loop

LINES = ('cfm', 'papa', 'pda', 'geometry')

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file with get_config(); override keys '
    'with --config.key=value.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Folder for logs, checkpoints and results; a run '
    'started again on the same folder resumes.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 of a multi-process '
    'run (jax.distributed); unset: from Slurm / TPU, or one process.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Processes of a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'Index of this process, 0 .. num_processes - 1.')
_ALL_DEVICES = flags.DEFINE_bool(
    'all_devices', False, 'Split each batch over all local devices (always '
    'on with several processes).')

# Exit status of a run stopped by SIGTERM / SIGUSR1 after saving: "try again"
# (EX_TEMPFAIL), so schedulers and scripts can tell it from success.
EXIT_PREEMPTED = 75


def line_module(line: str):
  """The `experiment` module of a research line, by name."""
  if line not in LINES:
    raise config_lib.ConfigError(
        f'config.line={line!r} is not one of {list(LINES)}.')
  return importlib.import_module(f'{line}.experiment')


def prepare(config, workdir: str):
  """Validates the config, creates the workdir and records the config."""
  line = config_lib.require_choice(config, 'line', LINES)
  module = line_module(line)
  module.validate(config)

  os.makedirs(workdir, exist_ok=True)
  recorded = config.to_json_best_effort(indent=2, sort_keys=True)
  _check_same_run(workdir, recorded)
  if distributed.is_main_process():
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(recorded)
  return module


def _flatten(tree, prefix=''):
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flatten(value, f'{prefix}.{key}' if prefix else key))
  return flat


def _check_same_run(workdir: str, recorded: str) -> None:
  """Refuses to resume a workdir that holds a run of another config.

  Resuming loads the workdir's checkpoint; with other settings the result
  would silently mix two runs.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    before = _flatten(json.load(f))
  now = _flatten(json.loads(recorded))
  changed = sorted(k for k in before.keys() | now.keys()
                   if before.get(k) != now.get(k))
  if changed:
    shown = ', '.join(f'{k}: {before.get(k)!r} -> {now.get(k)!r}'
                      for k in changed[:5])
    raise config_lib.ConfigError(
        f'workdir {workdir!r} holds a run with another config ({shown}); '
        'resuming it would mix the two. Pass a new --workdir, or delete '
        'that folder to start over.')


def write_results(results: dict, workdir: str) -> str | None:
  """Writes results.json (process 0 only); it marks the run as finished."""
  if not distributed.is_main_process():
    return None
  path = os.path.join(workdir, 'results.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(results, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('Pass --config=path/to/config.py.')
  workdir = _WORKDIR.value or os.path.join('runs', config.get('name', 'run'))
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                         _PROCESS_ID.value)
  if _ALL_DEVICES.value:
    distributed.use_all_devices()

  try:
    module = prepare(config, workdir)
  except config_lib.ConfigError as error:
    sys.exit(f'Bad config: {error}')
  logging.get_absl_handler().use_absl_log_file('log', workdir)
  if distributed.is_main_process():
    print(f'{config.line}: workdir {workdir}; {jax.process_count()} '
          f'process(es); devices {jax.devices()}', flush=True)

  try:
    results = module.train_and_evaluate(config, workdir)
  except loop.Preempted as stop:
    print(stop, flush=True)
    sys.exit(EXIT_PREEMPTED)
  except loop.NonFiniteError as error:
    sys.exit(f'Stopped: {error}')
  except data_lib.DataError as error:
    # Missing or malformed data is the user's to fix; no traceback.
    sys.exit(f'Data: {error}')

  path = write_results(results, workdir)
  if path:
    print(f'results written to {path}', flush=True)


def _parse_flags(argv):
  """absl's flag parsing, with bad config paths and keys as one-line errors."""
  try:
    remaining = flags.FLAGS(argv)
    # A config file that failed to load only raises when first read.
    config = _CONFIG.value
    if config is not None:
      _ = 'line' in config
    return remaining
  except flags.Error as error:
    sys.exit(f'Bad flag: {error}')
  except (AttributeError, KeyError, OSError, TypeError, ValueError) as error:
    sys.exit(f'Bad config: {type(error).__name__}: {error}. Check that the '
             '--config path exists and that every --config.KEY override '
             'names a key of that config file.')


def run():
  """Parses flags and runs `main`; the body of every launcher."""
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
