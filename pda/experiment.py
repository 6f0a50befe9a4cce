"""PDA line: the app's entry points and the main report's section.

`train_and_evaluate` runs either the full protocol (config.mode='grid':
every method x grid point x seed x task, then the selection table) or one
(method, hyper-parameter point, seed) (config.mode='single').
`main_section` runs the digits task with a reduced grid for `make run`.

Two departures from the benchmark hold in every mode: hyper-parameters and
checkpoints are selected on the same training runs whose chosen models are
reported (the benchmark re-trains the chosen point on new seeds), and DEV's
domain classifier is a logistic regression (the benchmark's is a linear SVM
with Platt scaling). Grid runs keep each (task, method) in
workdir/runs/<task>/<method>, single runs in the workdir: train-state
checkpoints plus every checkpoint's outputs, so a stopped run resumes.
"""

from concurrent import futures
import json
import os
import time

import numpy as np

from common import config as config_lib
from common import report
from pda import data
from pda import methods
from pda import protocol
from pda import selection

MODES = ('grid', 'single')
GRIDS = ('full', 'reduced')

# A reduced grid for the main report: points of each benchmark grid that
# span its main trade-off (fixed values as in the benchmark's defaults).
REDUCED_GRID = {
    'source_only': {},
    'pada': {'lambda': (0.1, 1.0)},
    'safn': {'lambda': (0.01, 0.1), 'delta_r': (1.0,)},
    'ba3us': {'cot_weight': (0.1, 1.0), 'ent_weight': (0.1,)},
    'ar': {'rho0': (5.0,), 'up': (5.0,), 'low': (-5.0,),
           'ent_weight': (0.01, 0.1)},
    'jumbot': {'tau': (0.01,), 'eta_1': (1e-3, 1e-2), 'eta_2': (1.0,),
               'eta_3': (10.0,)},
    'mpot': {'epsilon': (0.5,), 'eta_1': (1e-2, 0.1), 'eta_2': (1.0,),
             'mass': (0.3,)},
}


def validate(config) -> None:
  """Raises ConfigError naming the first bad key."""
  config_lib.require_training(config)
  mode = config_lib.require_choice(config, 'mode', MODES)
  config_lib.require_choices(config, 'tasks', data.TASKS)
  names = config_lib.require_choices(config, 'methods', methods.METHODS)
  config_lib.require_choice(config, 'grid', GRIDS)
  config_lib.require_int(config, 'num_seeds', minimum=1)
  config_lib.require_int(config, 'max_grid_points', minimum=0)
  config_lib.require_int(config, 'num_workers', minimum=0)
  config_lib.require_int(config, 'model.bottleneck_dim', minimum=1)
  widths = tuple(config.model.get('widths', ()))
  if any(not isinstance(w, int) or w < 1 for w in widths):
    raise config_lib.ConfigError(
        f'config.model.widths={widths!r} must hold integers >= 1, e.g. '
        "--config.model.widths='(64,)'.")
  config_lib.require_int(config, 'model.critic_steps', minimum=1)
  num_steps = config.train.num_steps
  if num_steps % config.train.log_every:
    raise config_lib.ConfigError(
        f'config.train.num_steps={num_steps} must be a multiple of '
        f'config.train.log_every={config.train.log_every} (the checkpoint '
        'interval); set --config.train.log_every to a divisor.')
  if mode == 'single':
    if len(names) != 1:
      raise config_lib.ConfigError(
          f'config.methods={config.methods!r}: mode=single runs one method; '
          'set --config.methods=NAME.')
    _single_point(config, names[0])


def _single_point(config, name: str) -> dict:
  m = methods.method(name)
  try:
    given = json.loads(config.hp or '{}')
  except json.JSONDecodeError as error:
    raise config_lib.ConfigError(
        f'config.hp={config.hp!r} is not JSON: {error}; set it like '
        '--config.hp=\'{"lambda": 1.0}\'.') from error
  unknown = sorted(set(given) - set(m.grid) - set(m.fixed))
  missing = sorted(set(m.grid) - set(given))
  if unknown or missing:
    raise config_lib.ConfigError(
        f'config.hp for {name} has unknown keys {unknown} and lacks '
        f'{missing}; its grid is {m.grid}.')
  return dict(m.fixed, **given)


def spec_from_config(config, task) -> methods.Spec:
  return methods.Spec(
      num_classes=task.num_classes, num_steps=config.train.num_steps,
      batch_size=config.train.batch_size, interval=config.train.log_every,
      learning_rate=config.train.learning_rate,
      widths=tuple(config.model.widths),
      bottleneck_dim=config.model.bottleneck_dim, conv=config.model.conv,
      critic_steps=config.model.critic_steps)


def _task_kwargs(config, name: str) -> dict:
  d = config.data
  if name == 'digits':
    return {'rotation': d.rotation, 'seed': config.seed}
  if name == 'mnist1d':
    return {'seed': config.seed}
  kwargs = {'features_dir': d.features_dir or None, 'seed': config.seed}
  if d.source:
    kwargs.update(source=d.source, target=d.target)
  if name == 'domainnet':
    kwargs['data_dir'] = d.root or None
  else:
    kwargs['root'] = d.root or None
  return kwargs


def _load_task(config, name: str) -> data.Task:
  """The task, with a data error on a real benchmark naming the config keys
  that point at its files."""
  try:
    return data.task(name, **_task_kwargs(config, name))
  except data.DataError as error:
    if name in ('digits', 'mnist1d'):
      raise
    raise data.DataError(
        f'{error} (task {name!r} reads its domains from '
        f'--config.data.features_dir={config.data.features_dir!r} (a .npz '
        'of backbone features per domain) or --config.data.root='
        f'{config.data.root!r}; pick the pair with --config.data.source / '
        '--config.data.target.)') from error


def points_for(config, name: str) -> list[dict]:
  m = methods.method(name)
  grid = m.grid if config.grid == 'full' else REDUCED_GRID[name]
  return protocol.expand_grid(grid, m.fixed,
                              max_points=config.max_grid_points,
                              seed=config.seed)


def train_and_evaluate(config, workdir: str) -> dict:
  names = config_lib.require_choices(config, 'methods', methods.METHODS)
  task_names = config_lib.require_choices(config, 'tasks', data.TASKS)
  tasks = [_load_task(config, t) for t in task_names]

  every = config.train.checkpoint_every
  if config.mode == 'single':
    task, name = tasks[0], names[0]
    run = protocol.run_method(name, task, spec_from_config(config, task),
                              [_single_point(config, name)], [config.seed],
                              workdir=workdir, checkpoint_every=every,
                              quiet=False)
    return {'method': name, 'task': task.name, 'hp': run.points[0],
            'seed': config.seed, 'checkpoint_steps': run.steps,
            'checkpoint_scores': {k: v[0, 0].tolist()
                                  for k, v in run.scores.items()},
            # None when a finished run was only re-scored.
            'steps_per_second': (run.steps_per_second
                                 if np.isfinite(run.steps_per_second)
                                 else None)}

  # Each (task, method) trains in its own folder, so a stopped grid resumes;
  # they run in threads because compilation, most of the time here, is
  # single-threaded and releases the GIL.
  seeds = [config.seed + i for i in range(config.num_seeds)]
  jobs = [(name, t, task) for name in names
          for t, task in zip(task_names, tasks)]

  def run(job):
    name, t, task = job
    return protocol.run_method(
        name, task, spec_from_config(config, task), points_for(config, name),
        seeds, workdir=os.path.join(workdir, 'runs', t, name),
        checkpoint_every=every)

  workers = config.num_workers or os.cpu_count() or 1
  with futures.ThreadPoolExecutor(workers) as pool:
    done = list(pool.map(run, jobs))
  runs = {name: [] for name in names}
  for (name, _, _), method_run in zip(jobs, done):
    runs[name].append(method_run)
  rows, results = protocol.table_rows(runs)
  paths = protocol.write_tables(rows, config.to_dict(), workdir)
  print(report.console_table(protocol.HEADERS[:4],
                             [r[:4] for r in rows]), flush=True)
  return {'results': results, 'tables': paths}


# ---------------------------------------------------------------------------
# Main report section.

PAPER = (
    'Salvador et al. (TMLR 2023) train 7 PDA methods on Office-Home '
    '(65 -> 25 classes) and VisDA-2017 (12 -> 6) with a ResNet-50 and '
    'select hyper-parameters and checkpoints with 7 strategies. Their two '
    'headline findings: without target labels, the selected models lose up '
    'to 30 percentage points of target accuracy against the oracle; and '
    'only one (method, selection) pair does well on both datasets. Using '
    'a few target labels (1-shot, 100 random) comes much closer to the '
    'oracle than the label-free strategies.')

PROTOCOL_DIFFERENCES = (
    'Differences in protocol: digits 8x8 (10 -> 5 classes, target rotated '
    '30 degrees) instead of ImageNet-scale images; a small MLP trained '
    'from scratch instead of a fine-tuned ResNet-50; a reduced grid (1-2 '
    'points per method) and {seeds} seeds on the same runs for '
    'hyper-parameter and checkpoint choice, and the accuracies reported '
    'are those of the same runs (the benchmark re-trains the chosen point '
    'on 3 new seeds); {steps} steps with a checkpoint every {interval}; '
    'DEV uses a logistic regression as the domain classifier where the '
    'benchmark uses a linear SVM with Platt scaling; MPOT\'s entropic '
    'partial plan is solved in a dummy-point form that differs from the '
    'benchmark\'s POT plan by a few percent of the mass '
    '(`pda/ot_losses.py`).')


def main_config(tiny: bool):
  """The config of the main report's run (full grid replaced by REDUCED)."""
  from experiments.pda.configs import grid as grid_config  # pylint: disable=g-import-not-at-top

  config = grid_config.get_config('tiny' if tiny else 'main')
  return config


def main_section(workdir: str, tiny: bool) -> report.Section:
  """Runs the digits task with the reduced grid; returns the PDA section."""
  config = main_config(tiny)
  validate(config)
  tick = time.perf_counter()
  results = train_and_evaluate(config, workdir)['results']
  seconds = time.perf_counter() - tick

  headers = ['method', *selection.SELECTIONS, 'worst label-free drop']
  rows = []
  for name, by_sel in results.items():
    drop = max(by_sel['oracle'] - by_sel[s] for s in selection.LABEL_FREE)
    rows.append([name] + [100 * by_sel[s] for s in selection.SELECTIONS]
                + [100 * drop])
  mean_drop = {s: float(np.mean([r['oracle'] - r[s]
                                 for r in results.values()]))
               for s in selection.SELECTIONS}
  drops = ', '.join(f'{s} {100 * v:.1f}' for s, v in mean_drop.items()
                    if s != 'oracle')
  markdown = '\n\n'.join([
      '## Partial domain adaptation: model selection (pda/)',
      f'Target accuracy (%) of the model each strategy selects, digits '
      f'task, mean over seeds; {seconds:.0f} s on this machine. Table and '
      f'config: `pda/table.md`, `pda/table.csv`.',
      report.markdown_table(headers, rows),
      f'Mean drop from the oracle (percentage points): {drops}.',
      'Paper: ' + PAPER,
      PROTOCOL_DIFFERENCES.format(seeds=config.num_seeds,
                                  steps=config.train.num_steps,
                                  interval=config.train.log_every),
  ])
  return report.Section(
      line='pda', results={'results': results, 'seconds': seconds,
                           'mean_drop_from_oracle': mean_drop},
      markdown=markdown, table=report.console_table(headers, rows))
