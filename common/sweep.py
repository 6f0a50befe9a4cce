"""Sweeps: many runs of one config, each with its own overrides and workdir.

A config file declares its sweep either as a field, `config.sweep = [{...},
...]`, or as a function beside `get_config`:

    def get_sweep(variant=''):
      return sweep.product({'method': ['icfm', 'otcfm'], 'seed': [0, 1]})

Each entry maps dotted config keys to values. Every run lives in
`<sweep_root>/<name>`, the name spelled from its overrides
(`method=icfm,seed=0`), and is

* finished when its workdir holds results.json: a re-launch skips it;
* started when it holds checkpoints: a re-launch resumes it (the loop picks
  up the newest checkpoint);
* new otherwise.

`launch` runs the unfinished runs one after another in this process
('local'), in a pool of processes ('parallel'), or as a submitit job array
('slurm'; submitit's local executor with `cluster='local'`). Under submitit
a run stopped by the scheduler's warning signal saves a checkpoint and asks
submitit to requeue it (`SweepTask`). `gather` collects the results into a
table, written as CSV and markdown.
"""

import concurrent.futures
import copy
import csv
import dataclasses
import hashlib
import importlib.util
import inspect
import itertools
import json
import multiprocessing
import os
import re
import signal
import subprocess
import traceback
from typing import Any, Mapping, Sequence

import submitit

from common import app
from common import config as config_lib
from common import distributed
from common import loop
from common import report

LAUNCHERS = ('local', 'parallel', 'slurm')
FINISHED, STARTED, NEW = 'finished', 'started', 'new'
_MAX_NAME = 120


@dataclasses.dataclass(frozen=True)
class Run:
  """One point of a sweep.

  Attributes:
    name: folder name, spelled from the overrides.
    overrides: dotted config key -> value.
    workdir: `<sweep_root>/<name>`.
  """
  name: str
  overrides: dict
  workdir: str

  @property
  def status(self) -> str:
    return run_status(self.workdir)


def product(axes: Mapping[str, Sequence]) -> list[dict]:
  """Every combination of the axes' values, the last key varying fastest.

  >>> product({'method': ['icfm', 'otcfm'], 'seed': [0, 1]})[1]
  {'method': 'icfm', 'seed': 1}
  """
  keys = list(axes)
  for key in keys:
    if isinstance(axes[key], (str, bytes)) or not len(axes[key]):
      raise ValueError(f'Sweep axis {key!r} needs a non-empty list of '
                       f'values, got {axes[key]!r}.')
  return [dict(zip(keys, values))
          for values in itertools.product(*(axes[k] for k in keys))]


def _literal(text: str) -> Any:
  """'3' -> 3, '1e-3' -> 0.001, 'True' -> True, anything else a string."""
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      continue
  return {'True': True, 'False': False}.get(text, text)


def parse_axis(text: str) -> tuple[str, list]:
  """'seed=0,1,2' -> ('seed', [0, 1, 2]) (a command-line sweep axis)."""
  key, sep, values = text.partition('=')
  if not sep or not key or not values:
    raise ValueError(f'A sweep axis reads key=v1,v2,... ; got {text!r}.')
  return key.strip(), [_literal(v.strip()) for v in values.split(',')]


def _spell(value: Any) -> str:
  if isinstance(value, float):
    value = format(value, 'g')
  return re.sub(r'[^A-Za-z0-9._+-]', '_', str(value))


def run_name(overrides: Mapping[str, Any]) -> str:
  """A folder name for one set of overrides: `key=value,key=value`.

  Keys keep the order given; characters outside [A-Za-z0-9._+-] become '_';
  a name over 120 characters is cut and ends with a hash of the whole.
  """
  if not overrides:
    return 'base'
  name = ','.join(f'{_spell(k)}={_spell(v)}' for k, v in overrides.items())
  if len(name) > _MAX_NAME:
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    name = f'{name[:_MAX_NAME - 11]}-{digest}'
  return name


def _load_module(spec: str):
  path, _, variant = spec.partition(':')
  if not os.path.exists(path):
    raise config_lib.ConfigError(f'--config: no config file at {path!r}.')
  module_spec = importlib.util.spec_from_file_location('_sweep_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module, variant


def load_config_file(spec: str):
  """`path.py[:variant]` -> (config, sweep entries) from that file.

  The sweep comes from `get_sweep(variant)` (or `get_sweep()`) when the file
  defines it, else from the config's `sweep` field, else it is one run with
  no overrides.
  """
  module, variant = _load_module(spec)
  config = module.get_config(variant) if variant else module.get_config()
  return config, sweep_entries(config, module, variant)


def sweep_of_file(spec: str, config) -> list[dict]:
  """The sweep entries of the file `spec` for an already built `config`."""
  module, variant = _load_module(spec)
  return sweep_entries(config, module, variant)


def sweep_entries(config, module=None, variant: str = '') -> list[dict]:
  """The sweep of a config (and its file's module), as override dicts."""
  if module is not None and hasattr(module, 'get_sweep'):
    takes_variant = bool(inspect.signature(module.get_sweep).parameters)
    entries = module.get_sweep(variant) if takes_variant else (
        module.get_sweep())
  elif 'sweep' in config:
    entries = config.sweep
  else:
    entries = [{}]
  entries = [dict(e.to_dict() if hasattr(e, 'to_dict') else e)
             for e in entries]
  if not entries:
    raise config_lib.ConfigError('The sweep is empty; list at least one '
                                 'override dict (or {} for the base run).')
  return entries


def with_overrides(config, overrides: Mapping[str, Any]):
  """A copy of `config` with dotted keys set; the `sweep` field dropped."""
  config = copy.deepcopy(config)
  with config.unlocked():
    if 'sweep' in config:
      del config['sweep']
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      if part not in node:
        raise config_lib.ConfigError(
            f'Sweep override {key!r}: the config has no {part!r}.')
      node = node[part]
    if leaf not in node:
      raise config_lib.ConfigError(
          f'Sweep override {key!r}: the config has no such key; check the '
          'spelling against the config file.')
    try:
      node[leaf] = value
    except (TypeError, ValueError) as error:
      raise config_lib.ConfigError(
          f'Sweep override {key}={value!r}: {error}') from error
  return config


def expand(entries: Sequence[Mapping[str, Any]], sweep_root: str,
           axes: Mapping[str, Sequence] | None = None) -> list[Run]:
  """The runs of a sweep: each entry, times the product of `axes` if given.

  Raises ConfigError when two runs would share a name (and a workdir).
  """
  combined = [dict(entry, **extra) for entry in entries
              for extra in (product(axes) if axes else [{}])]
  runs = [Run(run_name(o), o, os.path.join(sweep_root, run_name(o)))
          for o in combined]
  names = [run.name for run in runs]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise config_lib.ConfigError(
        f'Sweep runs share the names {duplicates}: make the override lists '
        'distinct.')
  return runs


def run_status(workdir: str) -> str:
  """finished (results.json), started (a checkpoint) or new."""
  if os.path.exists(os.path.join(workdir, 'results.json')):
    return FINISHED
  checkpoints = os.path.join(workdir, 'checkpoints')
  if os.path.isdir(checkpoints) and any(
      name.isdigit() for name in os.listdir(checkpoints)):
    return STARTED
  return NEW


def execute(config, workdir: str) -> dict:
  """Runs one config to completion in this process; writes results.json.

  Raises `loop.Preempted` when a signal stopped it after a checkpoint.
  """
  module = app.prepare(config, workdir)
  results = module.train_and_evaluate(config, workdir)
  app.write_results(results, workdir)
  return results


def _execute_quietly(config, workdir: str) -> tuple[str, str]:
  """`execute` for a worker process: (outcome, message), never raises."""
  try:
    execute(config, workdir)
    return FINISHED, ''
  except loop.Preempted as stop:
    return 'preempted', str(stop)
  except Exception as error:  # Reported by the launcher; others go on.
    return 'failed', ''.join(traceback.format_exception_only(error)).strip()


class SweepTask(submitit.helpers.Checkpointable):
  """What a submitit job runs: one sweep point, requeued when pre-empted.

  On the scheduler's warning signal the loop saves a checkpoint and stops;
  this then calls submitit's own handler, which pickles `checkpoint()` (the
  same call again: the run resumes from its checkpoints), requeues the job
  and exits.
  """

  def __call__(self, config, workdir: str) -> dict:
    distributed.initialize()
    requeue_signal = getattr(signal, 'SIG' + submitit.JobEnvironment.USR_SIG)
    requeue = signal.getsignal(requeue_signal)
    try:
      return execute(config, workdir)
    except loop.Preempted as stop:
      print(f'{stop} Asking submitit to requeue the job, which resumes '
            'from that checkpoint.', flush=True)
      if not callable(requeue):
        raise
      try:
        # submitit's handler calls self.checkpoint(), requeues and exits.
        requeue(requeue_signal, None)
      except (subprocess.CalledProcessError, OSError) as error:
        print(f'Requeue failed ({error}); start the sweep again to resume.',
              flush=True)
      raise


def _record(run: Run) -> None:
  """Writes the run's overrides into its workdir, for `gather`."""
  if distributed.is_main_process():
    report.write_json(os.path.join(run.workdir, 'overrides.json'),
                      {'name': run.name, 'overrides': run.overrides})


def launch(config, runs: Sequence[Run], launcher: str, *,
           parallel: int = 2, slurm: Mapping[str, Any] | None = None,
           cluster: str | None = None, wait: bool = True) -> dict[str, str]:
  """Runs the unfinished runs of a sweep; returns name -> outcome.

  Args:
    config: the base config; each run applies its overrides to a copy.
    runs: from `expand`.
    launcher: 'local' (in this process, one after another), 'parallel' (a
      pool of `parallel` processes) or 'slurm' (a submitit job array).
    parallel: processes of the 'parallel' launcher.
    slurm: submitit executor parameters (timeout_min, slurm_partition,
      gpus_per_node, nodes, tasks_per_node, slurm_array_parallelism, ...).
    cluster: submitit cluster: None picks Slurm when present, 'local' runs
      the jobs as local processes, 'debug' in this process.
    wait: wait for the submitit jobs (always for local clusters).

  Returns:
    name -> 'skipped' (finished before), 'finished', 'failed',
    'preempted' or 'submitted <job id>'.
  """
  if launcher not in LAUNCHERS:
    raise ValueError(f'--launcher={launcher!r} is not one of {LAUNCHERS}.')
  outcomes = {run.name: 'skipped' for run in runs if run.status == FINISHED}
  todo = [run for run in runs if run.name not in outcomes]
  configs = [with_overrides(config, run.overrides) for run in todo]
  for run in runs:
    _record(run)
  for run in todo:
    print(f'{run.name}: {"resume" if run.status == STARTED else "start"}',
          flush=True)
  for name in outcomes:
    print(f'{name}: finished before, skipped', flush=True)
  if not todo:
    return outcomes

  if launcher == 'local':
    for run, run_config in zip(todo, configs):
      try:
        execute(run_config, run.workdir)
        outcomes[run.name] = FINISHED
      except loop.Preempted:
        outcomes[run.name] = 'preempted'
        raise
      except Exception:  # One failed run does not stop the sweep.
        traceback.print_exc()
        outcomes[run.name] = 'failed'
  elif launcher == 'parallel':
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=parallel, mp_context=context) as pool:
      futures = {run.name: pool.submit(_execute_quietly, c, run.workdir)
                 for run, c in zip(todo, configs)}
      for name, future in futures.items():
        outcome, message = future.result()
        outcomes[name] = outcome
        if message:
          print(f'{name}: {outcome}: {message}', flush=True)
  else:
    outcomes.update(_launch_submitit(todo, configs, slurm or {}, cluster,
                                     wait))
  return outcomes


def _launch_submitit(todo, configs, slurm, cluster, wait) -> dict[str, str]:
  root = os.path.dirname(os.path.abspath(todo[0].workdir))
  executor = submitit.AutoExecutor(folder=os.path.join(root, 'submitit',
                                                       '%j'), cluster=cluster)
  executor.update_parameters(**{'name': os.path.basename(root), **slurm})
  jobs = executor.map_array(SweepTask(), configs,
                            [run.workdir for run in todo])
  outcomes = {}
  for run, job in zip(todo, jobs):
    print(f'{run.name}: job {job.job_id}', flush=True)
    outcomes[run.name] = f'submitted {job.job_id}'
  if wait or executor.cluster in ('local', 'debug'):
    for run, job in zip(todo, jobs):
      try:
        job.result()
        outcomes[run.name] = FINISHED
      except Exception as error:  # The job's own log holds the details.
        outcomes[run.name] = 'failed'
        print(f'{run.name}: failed: {error}', flush=True)
  return outcomes


def _flatten(tree: Mapping, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f'{prefix}{key}/'))
    elif isinstance(value, (int, float, str, bool)) or value is None:
      flat[f'{prefix}{key}'] = value
  return flat


def gather(sweep_root: str) -> tuple[list[str], list[list]]:
  """The sweep's table: run, override columns, status, then result columns.

  Reads every `<sweep_root>/*/overrides.json` and the results.json beside
  it (numbers and strings only; nested dicts become `a/b` columns).
  """
  rows = []
  for name in sorted(os.listdir(sweep_root)):
    path = os.path.join(sweep_root, name, 'overrides.json')
    if not os.path.exists(path):
      continue
    with open(path) as f:
      overrides = json.load(f)['overrides']
    results_path = os.path.join(sweep_root, name, 'results.json')
    results = {}
    if os.path.exists(results_path):
      with open(results_path) as f:
        results = _flatten(json.load(f))
    rows.append((name, overrides, run_status(os.path.join(sweep_root, name)),
                 results))
  if not rows:
    raise FileNotFoundError(f'No sweep runs (*/overrides.json) under '
                            f'{sweep_root!r}.')

  override_keys = list(dict.fromkeys(k for _, o, _, _ in rows for k in o))
  result_keys = sorted({k for *_, r in rows for k in r})
  headers = ['run', *override_keys, 'status', *result_keys]
  table = [[name, *(o.get(k, '') for k in override_keys), status,
            *(r.get(k, '') for k in result_keys)]
           for name, o, status, r in rows]
  return headers, table


def write_table(sweep_root: str, headers: Sequence[str],
                table: Sequence[Sequence]) -> tuple[str, str]:
  """Writes results.csv and results.md into the sweep root."""
  csv_path = os.path.join(sweep_root, 'results.csv')
  with open(csv_path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(headers)
    writer.writerows(table)
  md_path = os.path.join(sweep_root, 'results.md')
  with open(md_path, 'w') as f:
    f.write(report.markdown_table(headers, table) + '\n')
  return csv_path, md_path
