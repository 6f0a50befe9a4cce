"""Runs a sweep of one config, then writes its results table.

    python -m experiments.sweep \
        --config=experiments/cfm/configs/gaussians_to_moons.py:tiny \
        --sweep_root=runs/sweeps/cfm_tiny --axis=method=icfm,otcfm \
        --axis=seed=0,1 --launcher=parallel --parallel=2

The sweep is the config file's `get_sweep()` (or `config.sweep`) times the
product of the `--axis` flags; `--config.key=value` changes the base config
of every run. Launching again skips finished runs and resumes started ones.
`--launcher=slurm` submits a submitit job array (`--slurm_*` flags;
`--submitit_cluster=local` runs the array as local processes). See
docs/launching.md.
"""

import os
import sys

from absl import app as absl_app
from absl import flags
from ml_collections import config_flags

from common import app
from common import config as config_lib
from common import loop
from common import report
from common import sweep

_ROOT = flags.DEFINE_string('sweep_root', None,
                            'Folder of the sweep; each run gets a subfolder.')
_LAUNCHER = flags.DEFINE_enum('launcher', 'local', sweep.LAUNCHERS,
                              'local: one after another in this process; '
                              'parallel: a process pool; slurm: submitit.')
_AXES = flags.DEFINE_multi_string(
    'axis', [], 'key=v1,v2,...: a sweep axis; several axes form a product '
    '(and multiply the config file\'s own sweep).')
_PARALLEL = flags.DEFINE_integer('parallel', 2,
                                 'Processes of --launcher=parallel.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False,
                             'List the runs and their status, run nothing.')
_CLUSTER = flags.DEFINE_enum(
    'submitit_cluster', None, ['slurm', 'local', 'debug'],
    'submitit cluster; unset: Slurm when sbatch is present, else local.')
_PARTITION = flags.DEFINE_string('slurm_partition', None, 'Slurm partition.')
_TIMEOUT = flags.DEFINE_integer('slurm_timeout_min', 60,
                                'Time limit of each job, in minutes.')
_GPUS = flags.DEFINE_integer('slurm_gpus_per_node', 0, 'GPUs per node.')
_NODES = flags.DEFINE_integer('slurm_nodes', 1, 'Nodes (hosts) per run.')
_TASKS = flags.DEFINE_integer(
    'slurm_tasks_per_node', 1, 'Processes per node; with several, each run '
    'joins them through jax.distributed.')
_CPUS = flags.DEFINE_integer('slurm_cpus_per_task', 4, 'CPUs per process.')
_ARRAY = flags.DEFINE_integer('slurm_array_parallelism', 16,
                              'Jobs of the array running at once.')
_WAIT = flags.DEFINE_bool('slurm_wait', False,
                          'Wait for the Slurm jobs and gather their results.')


def _slurm_parameters() -> dict:
  parameters = dict(
      timeout_min=_TIMEOUT.value, nodes=_NODES.value,
      tasks_per_node=_TASKS.value, cpus_per_task=_CPUS.value,
      slurm_array_parallelism=_ARRAY.value)
  if _GPUS.value:
    parameters['gpus_per_node'] = _GPUS.value
  if _PARTITION.value:
    parameters['slurm_partition'] = _PARTITION.value
  return parameters


def main(argv):
  if len(argv) > 1:
    raise absl_app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = app._CONFIG.value  # pylint: disable=protected-access
  spec = config_flags.get_config_filename(flags.FLAGS['config'])
  try:
    axes = dict(sweep.parse_axis(a) for a in _AXES.value)
    entries = sweep.sweep_of_file(spec, config)
    runs = sweep.expand(entries, _ROOT.value, axes)
    for run in runs:  # Bad overrides fail here, before anything runs.
      app.line_module(config.line).validate(
          sweep.with_overrides(config, run.overrides))
  except (config_lib.ConfigError, ValueError) as error:
    sys.exit(f'Bad sweep: {error}')

  print(f'sweep {_ROOT.value}: {len(runs)} runs', flush=True)
  if _DRY_RUN.value:
    for run in runs:
      print(f'  {run.status:8s} {run.name}')
    return

  slurm_cluster = _LAUNCHER.value == 'slurm' and _CLUSTER.value in (
      None, 'slurm')
  try:
    outcomes = sweep.launch(
        config, runs, _LAUNCHER.value, parallel=_PARALLEL.value,
        slurm=_slurm_parameters(), cluster=_CLUSTER.value,
        wait=_WAIT.value)
  except loop.Preempted as stop:
    print(f'{stop} Launch the sweep again to resume.', flush=True)
    sys.exit(app.EXIT_PREEMPTED)
  print(report.console_table(['run', 'outcome'], sorted(outcomes.items())))
  if slurm_cluster and not _WAIT.value:
    print(f'Jobs submitted; when they end: python -m experiments.gather '
          f'--sweep_root={_ROOT.value}')
    return

  headers, table = sweep.gather(_ROOT.value)
  paths = sweep.write_table(_ROOT.value, headers, table)
  print(f'table: {" and ".join(paths)}')
  if any(o in ('failed', 'preempted') for o in outcomes.values()):
    sys.exit(1)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'sweep_root'])
  absl_app.run(main)
