"""The geometry line's experiments: sweeps of the two-pass protocol.

`train_and_evaluate(config, workdir)` runs a sweep (batch sizes x optimizers
x schedules x widths, all seeds vmapped in one program per point) on one
dataset; `main_section(workdir, tiny)` is the headline experiment of the
main report: an MLP on MNIST-1D and on digits, 3 seeds x 3 batch sizes,
plus the probes attached to a 2-D flow-matching run and a PAPA member.
"""

import dataclasses
import itertools
import os

import numpy as np

from common import config as config_lib
from common import data as data_lib
from common import report
from geometry import plots
from geometry import protocol
from geometry import setups

DATASETS = ('mnist1d', 'digits')
KINDS = {'displacement': 'disp', 'probe_batches': 'probe',
         'probe_mean': 'probe/mean', 'full_batch': 'full'}
PAPER = ('Guille-Escuret, Naganuma, Fatras, Mitliagkas, "No Wrong Turns: The '
         'Simple Geometry Of Neural Networks Optimization Paths", ICML 2024')


@dataclasses.dataclass(frozen=True)
class Cell:
  """One point of a sweep; its seeds run together as one population."""
  dataset: str
  batch_size: int
  optimizer: str
  schedule: str
  width: int
  depth: int
  learning_rate: float
  num_steps: int
  seeds: tuple

  @property
  def label(self) -> str:
    return (f'{self.dataset}_b{self.batch_size}_{self.optimizer}_'
            f'{self.schedule}_w{self.width}')


def run_cell(cell: Cell, dataset: data_lib.ArrayDataset, *, probe_every: int,
             num_probe_batches: int, probe_batch_size: int, full_batch: bool,
             controls, seed: int = 0, workdir: str | None = None):
  """Both passes of one cell; returns (records, trajectory)."""
  setup = setups.classifier_setup(
      dataset, seeds=cell.seeds, widths=(cell.width,) * cell.depth,
      batch_size=cell.batch_size, num_steps=cell.num_steps,
      learning_rate=cell.learning_rate, optimizer_name=cell.optimizer,
      schedule_name=cell.schedule, probe_every=probe_every,
      num_probe_batches=num_probe_batches,
      probe_batch_size=probe_batch_size, full_batch=full_batch)
  trajectory = protocol.run(setup, seed=seed, controls=controls,
                            workdir=workdir)
  return records_of(cell, trajectory), trajectory


def _short(summary: dict) -> dict:
  return dict(gamma_median=summary['gamma']['q50'],
              frac_gamma_positive=summary['frac_gamma_positive'],
              frac_gamma_positive_early=summary['frac_gamma_positive_early'],
              num_measured=summary['num_measured'])


def records_of(cell: Cell, trajectory: protocol.Trajectory) -> list[dict]:
  """One JSON-ready record per seed of a cell."""
  steps = trajectory.step_metrics['step']
  summaries = {ref: protocol.summarize(trajectory.geometry('mb', ref),
                                       trajectory.num_steps, steps=steps)
               for ref in trajectory.references}
  other_kinds = {name: protocol.summarize(trajectory.geometry(kind, 'final'),
                                          trajectory.num_steps, steps=steps)
                 for name, kind in KINDS.items()
                 if f'geo/{kind}/grad_norm' in trajectory.step_metrics}
  loss = np.asarray(trajectory.step_metrics['loss'])
  tail = loss[-max(1, len(loss) // 10):]

  records = []
  for m, seed in enumerate(cell.seeds):
    main = summaries['final'][m]
    record = dict(
        dataset=cell.dataset, batch_size=cell.batch_size, seed=int(seed),
        optimizer=cell.optimizer, schedule=cell.schedule, width=cell.width,
        depth=cell.depth, learning_rate=cell.learning_rate,
        num_steps=cell.num_steps,
        gamma_median=main['gamma']['q50'],
        frac_gamma_positive=main['frac_gamma_positive'],
        frac_gamma_positive_early=main['frac_gamma_positive_early'],
        quantiles={k: main[k] for k in ('gamma', 'rsi', 'eb', 'eta_star')},
        eta_star_by_decile=main['eta_star_by_decile'],
        late_rise_rsi=main['late_rise_rsi'],
        late_rise_eb=main['late_rise_eb'],
        final_train_loss=float(np.mean(tail[:, m])),
        replay_exact=trajectory.replay_exact)
    record['controls'] = {
        ref: dict(_short(s[m]), late_rise_rsi=s[m]['late_rise_rsi'],
                  late_rise_eb=s[m]['late_rise_eb'])
        for ref, s in summaries.items() if ref != 'final'}
    record.update({name: _short(s[m]) for name, s in other_kinds.items()})
    records.append(record)
  return records


# ---------------------------------------------------------------------------
# The app entry points.


def _ints(value, key: str) -> tuple:
  try:
    values = tuple(int(v) for v in str(value).split(',') if v.strip())
  except ValueError as error:
    raise config_lib.ConfigError(
        f'config.{key}={value!r} must be comma-separated integers, e.g. '
        f'--config.{key}=16,64,256.') from error
  if not values or any(v < 1 for v in values):
    raise config_lib.ConfigError(
        f'config.{key}={value!r} must list one or more integers >= 1, e.g. '
        f'--config.{key}=16,64,256.')
  return values


def validate(config) -> None:
  """Checks the config before any work; raises ConfigError naming the key."""
  config_lib.require_training(config)
  config_lib.require_choice(config, 'dataset', DATASETS)
  config_lib.require_int(config, 'num_seeds', minimum=1)
  config_lib.require_int(config, 'model.depth', minimum=1)
  config_lib.require_int(config, 'probe.every', minimum=1)
  config_lib.require_int(config, 'probe.num_batches', minimum=0)
  config_lib.require_int(config, 'probe.batch_size', minimum=1)
  _ints(config.sweep.batch_sizes, 'sweep.batch_sizes')
  _ints(config.sweep.widths, 'sweep.widths')
  config_lib.require_choices(config, 'sweep.optimizers', setups.OPTIMIZERS)
  config_lib.require_choices(config, 'sweep.schedules', setups.SCHEDULES)
  controls = str(config.controls)
  if controls.strip():
    config_lib.require_choices(config, 'controls', protocol.CONTROLS)
  if 'other_seed' in controls and config.num_seeds < 2:
    raise config_lib.ConfigError(
        "config.controls has 'other_seed', which needs config.num_seeds >= "
        '2; set --config.num_seeds=3 or drop the control.')
  if config.train.num_steps < 20:
    raise config_lib.ConfigError(
        f'config.train.num_steps={config.train.num_steps} is too short to '
        'split into early and late steps; use >= 20.')


def cells_of(config) -> list[Cell]:
  """The sweep's points, in a fixed order."""
  seeds = tuple(config.seed + i for i in range(config.num_seeds))
  grid = itertools.product(
      _ints(config.sweep.batch_sizes, 'sweep.batch_sizes'),
      config_lib.require_choices(config, 'sweep.optimizers',
                                 setups.OPTIMIZERS),
      config_lib.require_choices(config, 'sweep.schedules', setups.SCHEDULES),
      _ints(config.sweep.widths, 'sweep.widths'))
  return [Cell(config.dataset, b, o, s, w, config.model.depth,
               config.train.learning_rate, config.train.num_steps, seeds)
          for b, o, s, w in grid]


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs the sweep; writes plots and returns every run's record."""
  validate(config)
  dataset = data_lib.load(config.dataset, data_dir=config.data_dir or None,
                          seed=config.seed)
  controls = tuple(c.strip() for c in str(config.controls).split(',')
                   if c.strip())
  records, series = [], {}
  for cell in cells_of(config):
    cell_records, trajectory = run_cell(
        cell, dataset, probe_every=config.probe.every,
        num_probe_batches=config.probe.num_batches,
        probe_batch_size=config.probe.batch_size,
        full_batch=config.probe.full_batch, controls=controls,
        seed=config.seed, workdir=os.path.join(workdir, cell.label))
    records += cell_records
    steps = trajectory.step_metrics['step']
    series[cell.label] = (steps, trajectory.geometry('mb', 'final'))
    print(f'[geometry] {cell.label}: gamma median '
          f'{[round(r["gamma_median"], 3) for r in cell_records]}, '
          f'positive before the last 10% '
          f'{[round(r["frac_gamma_positive_early"], 4) for r in cell_records]}',
          flush=True)
  plots.trajectory_figure(os.path.join(workdir, 'geometry.png'), series,
                          title=f'{config.dataset}: minibatch gradient vs w*')
  return {'runs': records}


# ---------------------------------------------------------------------------
# The main report's section.

MAIN = dict(
    mnist1d=dict(learning_rate=0.05, num_steps=1000),
    digits=dict(learning_rate=0.1, num_steps=1000))


def main_section(workdir: str, tiny: bool) -> report.Section:
  """MLPs on MNIST-1D and digits, 3 seeds x 3 batch sizes, plus the demos.

  Args:
    workdir: where the plots go (runs/main/geometry).
    tiny: a seconds-long smoke version (few steps, no demos).

  Returns:
    A `report.Section` whose `results` is a list with one record per run.
  """
  # Imported here: the demos reach into other lines, the library does not.
  from geometry import demos  # pylint: disable=g-import-not-at-top
  from geometry import summary as summary_lib  # pylint: disable=g-import-not-at-top

  os.makedirs(workdir, exist_ok=True)
  batch_sizes = (16,) if tiny else (16, 64, 256)
  seeds = (0, 1) if tiny else (0, 1, 2)
  records, figures = [], []
  for name in DATASETS:
    dataset = data_lib.load(name, seed=0)
    num_steps = 30 if tiny else MAIN[name]['num_steps']
    series, controls_series = {}, {}
    for batch_size in batch_sizes:
      cell = Cell(name, batch_size, 'sgd', 'constant', 64, 2,
                  MAIN[name]['learning_rate'], num_steps, seeds)
      cell_records, trajectory = run_cell(
          cell, dataset, probe_every=max(1, num_steps // 25),
          num_probe_batches=1 if tiny else 4, probe_batch_size=256,
          full_batch=True,
          controls=protocol.CONTROLS)
      records += cell_records
      steps = trajectory.step_metrics['step']
      series[f'batch {batch_size}'] = (steps,
                                       trajectory.geometry('mb', 'final'))
      if batch_size == batch_sizes[len(batch_sizes) // 2]:
        controls_series = {f'w* = {ref}': (steps, trajectory.geometry(
            'mb', ref)) for ref in trajectory.references}
        controls_series['full batch vs final'] = (
            steps, trajectory.geometry('full', 'final'))
      print(f'[geometry] {name} batch {batch_size}: gamma median '
            f'{[round(r["gamma_median"], 3) for r in cell_records]} '
            f'({sum(trajectory.seconds):.0f} s)', flush=True)
    figures.append(plots.trajectory_figure(
        os.path.join(workdir, f'{name}_batch_sizes.png'), series,
        title=f'{name}: minibatch gradient vs the final iterate, 3 seeds'))
    figures.append(plots.trajectory_figure(
        os.path.join(workdir, f'{name}_controls.png'), controls_series,
        title=f'{name}, batch {batch_sizes[len(batch_sizes) // 2]}: '
              'reference points and controls'))

  demo_records, demo_notes = ([], []) if tiny else demos.run_all(workdir)
  records += demo_records
  markdown, table = summary_lib.section_text(records, figures, demo_notes,
                                             tiny=tiny)
  return report.Section(line='geometry', results=records, markdown=markdown,
                        table=table)
