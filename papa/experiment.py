"""PAPA experiments: the four methods on one dataset, scored and reported.

For each method (independent, PAPA, PAPA-all, PAPA-2) one population of
seeds x P members trains as one program (`papa.population`); the members of
a seed average only with each other, and every method sees the same member
seeds, so the same initialisations, data orders and regularisers. Each
seed's final population is then scored (`papa.soups`): every member, the
logit ensemble, the uniform soup and the greedy soup, on the test split; the
table averages over seeds and gives their spread.

Entry points: `validate` and `train_and_evaluate` for `common.app`, and
`main_section` for the main report.
"""

import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from common import config as config_lib
from common import data as data_lib
from common import loop
from common import models as common_models
from common import report
from papa import averaging
from papa import models
from papa import reporting
from papa import population as population_lib
from papa import regularisers
from papa import soups

SCORES = ('member_mean', 'member_min', 'member_max', 'ensemble',
          'uniform_soup', 'greedy_soup')


def base_config() -> ml_collections.ConfigDict:
  """Defaults every PAPA config starts from."""
  config = ml_collections.ConfigDict()
  config.line = 'papa'
  config.name = 'papa'
  config.seed = 0
  config.dataset = 'mnist1d'
  config.data_dir = ''
  config.validation_fraction = 0.1
  # MNIST-1D generator overrides (e.g. num_samples); empty for the others.
  config.data_args = ml_collections.ConfigDict()
  # conv: the CNN's convolution, 'patches' (batched matmuls, fast for a
  # vmapped population on CPU) or 'lax' (nn.Conv).
  config.model = ml_collections.ConfigDict(
      dict(name='mlp', widths=(0,), conv='patches'))
  # size P per population; `seeds` populations train side by side; devices:
  # 0 picks the most devices that split seeds x P evenly.
  config.population = ml_collections.ConfigDict(
      dict(size=5, seeds=3, num_devices=0))
  config.methods = 'independent,papa,papa_all,papa_2'
  config.papa = ml_collections.ConfigDict(dict(
      # auto: k and a from the dataset size, `pulls_per_epoch` pulls per
      # epoch that together shrink the distance to the mean by
      # `contraction_per_epoch` (0.46: the paper's a=0.99, k=10 with 782
      # steps per epoch on CIFAR). Otherwise `a` and `every` (k) are used.
      auto=True, pulls_per_epoch=10.0, contraction_per_epoch=0.46,
      a=0.99, every=10, lr_scaled=False,
      # T of PAPA-all and PAPA-2, in epochs; as in the paper's code, their
      # first averaging can come at the end of epoch 1.
      every_epochs=5.0, first_after_epoch_1=True,
      # REPAIR after every PAPA-all / PAPA-2 averaging (papa/repair.py), as
      # the paper's code does by default.
      repair=True))
  config.regularisers = ml_collections.ConfigDict(
      {name: tuple(values)
       for name, values in regularisers.DEFAULT_GRID.items()})
  config.optimizer = ml_collections.ConfigDict(
      dict(name='adamw', weight_decay=1e-4, momentum=0.9))
  # Training length in epochs; 0 uses train.num_steps.
  config.epochs = 0.0
  config.train = config_lib.training_defaults()
  config.train.checkpoint_every = 0
  config.eval_every = 0
  # False trains without a checkpoint folder (the main report does).
  config.checkpoints = True
  return config


def make_tiny(config) -> None:
  """Shrinks a config to a seconds-long smoke run.

  Compilation dominates such a run, so it trains in one fused chunk with one
  evaluation at the end (two programs), on a small model; P = 3 keeps an
  odd population for PAPA-2.
  """
  config.epochs = 0.0
  config.train.num_steps = 24
  config.train.log_every = 24
  if config.train.checkpoint_every:
    config.train.checkpoint_every = 24
  config.train.batch_size = 32
  config.eval_every = 24
  config.population.size = 3
  config.population.seeds = 2
  config.papa.every_epochs = 0.2
  config.papa.first_after_epoch_1 = False  # An epoch is longer than the run.
  if config.dataset == 'mnist1d':
    config.data_args.num_samples = 1000  # Generating 5,000 takes seconds.
  if config.model.name == 'resnet20':
    config.model.widths = (4,)
  else:
    config.model.widths = (16,)


# ---------------------------------------------------------------------------
# Config checks.


def _methods(config) -> tuple:
  return config_lib.require_choices(config, 'methods',
                                    population_lib.METHODS)


def validate(config) -> None:
  """Raises ConfigError naming the first bad key."""
  config_lib.require_training(config)
  config_lib.require_choice(config, 'dataset', data_lib.ARRAY_DATASETS)
  config_lib.require_choice(config, 'model.name', models.MODELS)
  config_lib.require_choice(config, 'model.conv', common_models.CONVS)
  if config.data_args.to_dict() and config.dataset != 'mnist1d':
    raise config_lib.ConfigError(
        f'config.data_args={config.data_args.to_dict()} are MNIST-1D '
        f'generator overrides; dataset {config.dataset!r} takes none (clear '
        'config.data_args).')
  config_lib.require_choice(config, 'optimizer.name', ('adamw', 'sgd'))
  config_lib.require_float(config, 'validation_fraction', minimum=0.0,
                           maximum=1.0, strict_minimum=True,
                           strict_maximum=True)
  config_lib.require_float(config, 'epochs', minimum=0.0)
  config_lib.require_int(config, 'eval_every', minimum=0)
  config_lib.require_int(config, 'population.seeds', minimum=1)
  config_lib.require_int(config, 'population.num_devices', minimum=0)
  if config.population.num_devices > len(jax.devices()):
    raise config_lib.ConfigError(
        f'config.population.num_devices={config.population.num_devices} '
        f'exceeds the {len(jax.devices())} device(s) here; set '
        '--config.population.num_devices=0 to use them all.')
  methods = _methods(config)
  averaged = any(m != 'independent' for m in methods)
  config_lib.require_int(config, 'population.size',
                         minimum=2 if averaged else 1)
  members = len(methods) * config.population.seeds * config.population.size
  devices = config.population.num_devices
  if devices and members % devices:
    divisors = [d for d in range(1, len(jax.devices()) + 1)
                if members % d == 0]
    raise config_lib.ConfigError(
        f'config.population.num_devices={devices} does not split the '
        f'{members} members (methods x seeds x P) evenly; set '
        f'--config.population.num_devices to one of {divisors} (0 picks the '
        'largest), or change population.size / seeds.')
  if any(w < 0 for w in config.model.widths):
    raise config_lib.ConfigError(
        f'config.model.widths={config.model.widths} must be positive sizes '
        '(or (0,) for the model default).')
  try:
    regularisers.check_grid(config.regularisers.to_dict())
  except ValueError as error:
    raise config_lib.ConfigError(str(error)) from error
  if 'papa' in methods:
    if config.papa.auto:
      config_lib.require_float(config, 'papa.pulls_per_epoch', minimum=0.0,
                               strict_minimum=True)
      config_lib.require_float(config, 'papa.contraction_per_epoch',
                               minimum=0.0, maximum=1.0,
                               strict_minimum=True, strict_maximum=True)
    else:
      config_lib.require_float(config, 'papa.a', minimum=0.0, maximum=1.0,
                               strict_maximum=True)
      config_lib.require_int(config, 'papa.every', minimum=1)
  if {'papa_all', 'papa_2'} & set(methods):
    config_lib.require_float(config, 'papa.every_epochs', minimum=0.0,
                             strict_minimum=True)


# ---------------------------------------------------------------------------
# Setup.


@dataclasses.dataclass
class Setup:
  """Everything the methods share: data, model, schedule, member seeds."""
  config: ml_collections.ConfigDict
  data: data_lib.ArrayDataset
  model: object
  num_steps: int
  steps_per_epoch: int
  learning_rate_fn: object
  optimizer: optax.GradientTransformation
  member_seeds: list
  hyper: dict
  x_stats: np.ndarray

  @property
  def P(self) -> int:
    return self.config.population.size


def _mesh(config, N: int):
  """The population mesh; num_devices 0 takes the most devices that split
  the N members evenly."""
  requested = config.population.num_devices
  if not requested:
    count = len(jax.devices())
    requested = max(d for d in range(1, count + 1) if N % d == 0)
  return population_lib.make_mesh(requested)


def build(config) -> Setup:
  """Loads the data and builds the model, optimizer and member seeds."""
  data = data_lib.load(config.dataset, data_dir=config.data_dir or None,
                       seed=config.seed,
                       validation_fraction=config.validation_fraction,
                       **config.data_args.to_dict())
  widths = tuple(w for w in config.model.widths if w > 0)
  model = models.make_model(config.model.name, data.num_classes,
                            widths=widths, conv=config.model.conv)

  n, B = len(data.train), config.train.batch_size
  steps_per_epoch = data_lib.steps_per_epoch(n, B)
  num_steps = (data_lib.epochs_to_steps(config.epochs, n, B)
               if config.epochs else config.train.num_steps)
  learning_rate_fn = optax.cosine_decay_schedule(
      config.train.learning_rate, num_steps)
  if config.optimizer.name == 'adamw':
    optimizer = optax.adamw(learning_rate_fn,
                            weight_decay=config.optimizer.weight_decay)
  else:
    optimizer = optax.chain(
        optax.add_decayed_weights(config.optimizer.weight_decay),
        optax.sgd(learning_rate_fn, momentum=config.optimizer.momentum,
                  nesterov=True))

  P, G = config.population.size, config.population.seeds
  member_seeds = [1000 * config.seed + j for j in range(G * P)]
  hyper = regularisers.member_combinations(config.regularisers.to_dict(),
                                           member_seeds)
  return Setup(config, data, model, num_steps, steps_per_epoch,
               learning_rate_fn, optimizer, member_seeds, hyper,
               soups.stat_batches(data.train.x))


def method_schedule(setup: Setup, name: str) -> population_lib.Method:
  """The averaging schedule of a method, with auto defaults resolved."""
  papa, spe = setup.config.papa, setup.steps_per_epoch
  if name == 'papa':
    if not papa.auto:
      return population_lib.Method('papa', every=papa.every, a=papa.a,
                                   lr_scaled=papa.lr_scaled)
    k = max(1, round(spe / papa.pulls_per_epoch))
    a = papa.contraction_per_epoch ** (k / spe)
    return population_lib.Method('papa', every=k, a=a,
                                 lr_scaled=papa.lr_scaled)
  if name in ('papa_all', 'papa_2'):
    return population_lib.Method(
        name, every=max(1, round(papa.every_epochs * spe)),
        first=spe if papa.first_after_epoch_1 else 0,
        repair=bool(papa.repair))
  return population_lib.Method(name)


# ---------------------------------------------------------------------------
# Training and scoring.


def _eval_fn(setup: Setup, methods: tuple):
  """Per method: mean member, logit-ensemble and uniform-soup test accuracy
  (the curves of the accuracy-versus-step plot).

  During training the soup keeps its members' averaged BatchNorm
  statistics; the final scores recompute them.
  """
  P, G = setup.P, setup.config.population.seeds
  M = len(methods)
  x, y = jnp.asarray(setup.data.test.x), jnp.asarray(setup.data.test.y)
  apply = lambda p, s: setup.model.apply({'params': p, **s}, x, train=False)
  correct = lambda logits: jnp.mean(jnp.argmax(logits, -1) == y, axis=-1)

  @jax.jit
  def scores(params, model_state):
    logits = jax.vmap(apply)(params, model_state)  # (M * G * P, n, classes)
    member = correct(logits).reshape(M, G * P).mean(axis=1)
    grouped = logits.reshape((M, G, P) + logits.shape[1:])
    ensemble = correct(grouped.mean(axis=2)).mean(axis=1)
    soup = averaging.in_groups(averaging.replace_with_mean,
                               (params, model_state), P)
    soup = correct(jax.vmap(apply)(*jax.tree.map(lambda w: w[::P], soup)))
    soup = soup.reshape(M, G).mean(axis=1)
    out = {}
    for i, name in enumerate(methods):
      out[f'{name}/member_mean'] = member[i]
      out[f'{name}/ensemble'] = ensemble[i]
      out[f'{name}/uniform_soup'] = soup[i]
    return out

  return lambda state, step: scores(state.params, state.model_state)


def run_methods(setup: Setup, methods: tuple, workdir: str | None,
                quiet: bool = False):
  """Trains every method's seeds x P members as one population.

  Members are laid out (method, seed, member); every method reuses the same
  member seeds, so its members start, see data and regularise exactly like
  the other methods' and only the averaging differs.

  Returns:
    (TrainResult, seconds).
  """
  config = setup.config
  G = config.population.seeds
  schedules = [method_schedule(setup, name) for name in methods]
  population = population_lib.Population(
      setup.model, setup.data.train, setup.data.num_classes,
      member_seeds=setup.member_seeds * len(methods), group_size=setup.P,
      optimizer=setup.optimizer, learning_rate_fn=setup.learning_rate_fn,
      batch_size=config.train.batch_size,
      hyper={k: np.tile(v, len(methods)) for k, v in setup.hyper.items()},
      methods=[m for m in schedules for _ in range(G)],
      mesh=_mesh(config, len(methods) * G * setup.P))
  tick = time.perf_counter()
  result = loop.train(
      population.init(), population.step_fn, num_steps=setup.num_steps,
      seed=config.seed, workdir=workdir, batch_fn=population.batch_fn,
      log_every=config.train.log_every,
      checkpoint_every=config.train.checkpoint_every,
      eval_fn=_eval_fn(setup, methods), eval_every=config.eval_every,
      name='papa', quiet=quiet,
      console_evals=[f'{name}/member_mean' for name in methods])
  return result, time.perf_counter() - tick


def score_method(setup: Setup, state, index: int, name: str) -> list:
  """Each seed's `soups.PopulationScores` for the method at `index`."""
  P, G = setup.P, setup.config.population.seeds
  gathered = jax.device_get((state.params, state.model_state))
  scores = []
  for g in range(G):
    first = (index * G + g) * P
    params, model_state = jax.tree.map(lambda w: w[first:first + P],
                                       gathered)
    scores.append(soups.score_population(
        setup.model, params, model_state, setup.data.validation,
        setup.data.test, setup.x_stats, averaged=name != 'independent'))
  return scores


def summarize(per_seed: list) -> dict:
  """Mean over seeds of each score, plus `<score>_std` and the raw rows."""
  rows = [s.as_dict() for s in per_seed]
  summary = {}
  for key in SCORES:
    values = np.asarray([row[key] for row in rows])
    summary[key] = float(values.mean())
    summary[f'{key}_std'] = float(values.std())
  # The member range is over every member of every seed.
  summary['member_min'] = float(min(row['member_min'] for row in rows))
  summary['member_max'] = float(max(row['member_max'] for row in rows))
  summary['greedy_size_mean'] = float(np.mean([r['greedy_size']
                                               for r in rows]))
  summary['per_seed'] = rows
  return summary


def train_and_evaluate(config, workdir: str, quiet: bool = False) -> dict:
  """Trains every method of the config and scores it; JSON-ready dict."""
  validate(config)
  setup = build(config)
  methods = _methods(config)
  result, seconds = run_methods(setup, methods,
                                workdir if config.checkpoints else None,
                                quiet)
  results = {name: summarize(score_method(setup, result.state, i, name))
             for i, name in enumerate(methods)}
  curves = {name: [{'step': row['step'],
                    **{key: row[f'eval/{name}/{key}'] for key in
                       ('member_mean', 'ensemble', 'uniform_soup')}}
                   for row in result.history
                   if f'eval/{name}/member_mean' in row]
            for name in methods}

  os.makedirs(workdir, exist_ok=True)
  reporting.accuracy_vs_step(curves,
                             os.path.join(workdir, reporting.PLOT_NAME))
  headers, rows = results_table(results)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(report.markdown_table(headers, rows) + '\n')
  return dict(
      results=results, curves=curves,
      schedules={name: dataclasses.asdict(method_schedule(setup, name))
                 for name in methods},
      seconds=seconds, steps_per_second=result.steps_per_second,
      num_steps=setup.num_steps, steps_per_epoch=setup.steps_per_epoch,
      population_size=setup.P, seeds=config.population.seeds,
      members=len(methods) * len(setup.member_seeds),
      dataset=config.dataset, model=config.model.name)


def _cell(summary: dict, key: str) -> str:
  return f'{100 * summary[key]:.1f} ± {100 * summary[key + "_std"]:.1f}'


def results_table(results: dict) -> tuple[list, list]:
  """Headers and rows: accuracies in %, mean ± std over seeds."""
  headers = ['method', 'member mean [min, max]', 'ensemble', 'uniform soup',
             'greedy soup']
  rows = []
  for name, s in results.items():
    member = (f'{_cell(s, "member_mean")} [{100 * s["member_min"]:.1f}, '
              f'{100 * s["member_max"]:.1f}]')
    rows.append([reporting.LABELS[name], member, _cell(s, 'ensemble'),
                 _cell(s, 'uniform_soup'), _cell(s, 'greedy_soup')])
  return headers, rows


# ---------------------------------------------------------------------------
# The main report's section.


def main_config(tiny: bool) -> ml_collections.ConfigDict:
  """P = 5 MLPs on MNIST-1D, 3 seeds, sized to ~3 minutes on 2 CPU cores."""
  from experiments.papa.configs import mnist1d  # pylint: disable=g-import-not-at-top
  config = mnist1d.get_config('tiny' if tiny else '')
  config.checkpoints = False
  if not tiny:
    config.population.size = 5
    config.population.seeds = 3
  return config


def main_section(workdir: str, tiny: bool) -> report.Section:
  """Runs the MNIST-1D comparison and writes its report section."""
  config = main_config(tiny)
  out = train_and_evaluate(config, workdir, quiet=False)
  headers, rows = results_table(out['results'])
  markdown = reporting.section_markdown(out, headers, rows)
  return report.Section(line='papa', results=out, markdown=markdown,
                        table=report.console_table(headers, rows))
