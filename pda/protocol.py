"""The evaluation protocol: grid x seeds x tasks -> a table of selections.

For one method on one task, every grid point and seed is one member of a
population trained by a single vmapped, jitted program (members that share
the method's static hyper-parameters), through `common.loop.train`. At each
checkpoint (every `spec.interval` steps) the host records every member's
logits and features; afterwards each selection strategy scores every
(grid point, seed, checkpoint) and `selection.select` picks hyper-parameters
then checkpoints. The table reports, per (method, selection), the chosen
models' target accuracy averaged over seeds and tasks, and its drop from the
oracle. Selection and the reported accuracy use the same runs: the chosen
point is not re-trained on new seeds as in the benchmark.

Compilation, not training, is most of the time of these small programs:
the init and evaluation functions compile once for every method, training
compiles once per (method, static hyper-parameters) at XLA's backend
optimisation level 0, and the experiment trains methods in threads.
"""

import csv
import dataclasses
import functools
import io
import itertools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl

from common import loop
from common import report
from pda import methods
from pda import selection


def expand_grid(grid: dict, fixed: dict | None = None, *,
                max_points: int = 0, seed: int = 0) -> list[dict]:
  """All points of a grid (name -> values), optionally a random subset."""
  names = sorted(grid)
  points = [dict(zip(names, values), **(fixed or {}))
            for values in itertools.product(*(grid[k] for k in names))]
  if not points:
    points = [dict(fixed or {})]
  if max_points and len(points) > max_points:
    keep = np.random.default_rng(seed).choice(len(points), max_points,
                                              replace=False)
    points = [points[i] for i in sorted(keep)]
  return points


@dataclasses.dataclass
class MethodRun:
  """Scores of a method's models on one task.

  Attributes:
    points: the G grid points.
    seeds: the S seeds.
    scores: selection -> (G, S, C) scores.
    steps_per_second: training speed of the whole population.
    seconds: wall time of training and scoring.
    steps: the C checkpoint steps.
  """
  points: list
  seeds: list
  scores: dict
  steps_per_second: float
  seconds: float
  steps: list = dataclasses.field(default_factory=list)

  @property
  def target_accuracy(self) -> np.ndarray:
    return self.scores['oracle']

  def selections(self) -> dict:
    return {name: selection.select(self.scores[name], self.target_accuracy)
            for name in selection.SELECTIONS}


def _group(m: methods.Method, points: list[dict]) -> dict:
  groups = {}
  for i, point in enumerate(points):
    groups.setdefault(tuple(point[k] for k in m.static), []).append(i)
  return groups


# XLA's backend optimisation level. The programs here are small networks run
# for a few hundred steps, so compilation (seconds per method) costs far more
# than the steps: level 0 compiles about 3x faster for slower steps.
COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}


def _network(spec: methods.Spec) -> methods.Spec:
  """The part of a spec that shapes the networks (a cache key)."""
  return methods.Spec(num_classes=spec.num_classes, widths=spec.widths,
                      bottleneck_dim=spec.bottleneck_dim, conv=spec.conv)


@functools.lru_cache(maxsize=None)
def _init_member(network: methods.Spec, example_shape: tuple):
  """Jitted (seed, g) -> (key, params, opt_state) of one member.

  Compiled once per network and shared by every method and population size
  (members are stacked on the host), instead of an eager vmapped init that
  compiles each initializer op separately.
  """

  def init(seed, g):
    root = jax.random.PRNGKey(seed)
    # Same seed, same initial network across grid points: only hp differ.
    params = methods.init_params(network, root, example_shape)
    opt_state = methods.optimizer(network).init(params)
    return jax.random.fold_in(root, g), params, opt_state

  return jax.jit(init, compiler_options=COMPILER_OPTIONS)


def init_population(m: methods.Method, spec: methods.Spec, task,
                    points: list[dict], seeds: list[int]):
  """The stacked train state of len(points) * len(seeds) members."""
  init = _init_member(_network(spec), task.example_shape)
  members = [jax.device_get(init(seed, g)) for g in range(len(points))
             for seed in seeds]
  keys, params, opt_state = jax.tree.map(lambda *xs: np.stack(xs), *members)

  hp_names = sorted(k for k in points[0] if k not in m.static)
  hp = {k: np.asarray([p[k] for p in points for _ in seeds], np.float32)
        for k in hp_names}
  n_members = len(points) * len(seeds)
  aux = {'class_weight': np.ones((n_members, spec.num_classes), np.float32),
         'w': np.ones((n_members, len(task.source_train)), np.float32)}
  return jax.device_put(loop.TrainState(
      step=np.zeros((), np.int32), params=params, opt_state=opt_state,
      model_state={'hp': hp, 'aux': aux, 'key': keys}))


def _state_axes(state):
  del state
  return loop.TrainState(step=None, params=0, opt_state=0, model_state=0)


def population_step(m, spec, arrays, static, state):
  one = methods.step_fn(m, spec, arrays, static)
  axes = _state_axes(state)
  return jax.vmap(one, in_axes=(axes, None, None), out_axes=(axes, 0))


@functools.lru_cache(maxsize=None)
def _evaluate_member(network: methods.Spec):
  """Jitted (params, x_v, x_s, x_t) -> one member's logits and features.

  One member at a time with the data as arguments: one compilation serves
  every method, population size and checkpoint.
  """

  def one(params, xs_val, xs, xt):
    g_v = methods.features(network, params, xs_val)
    g_t = methods.features(network, params, xt)
    return dict(source_val_logits=methods.classify(network, params, g_v),
                source_val_features=g_v,
                source_train_features=methods.features(network, params, xs),
                target_logits=methods.classify(network, params, g_t),
                target_features=g_t)

  return jax.jit(one, compiler_options=COMPILER_OPTIONS)


def make_evaluate(spec: methods.Spec, task):
  """(P-member params) -> every member's logits and features, (P, ...)."""
  one = _evaluate_member(_network(spec))
  data = [jnp.asarray(x) for x in (task.source_val.x, task.source_train.x,
                                   task.target.x)]

  def evaluate(params):
    params = jax.device_get(params)
    size = len(jax.tree.leaves(params)[0])
    members = [jax.device_get(one(jax.tree.map(lambda x: x[i], params),
                                  *data)) for i in range(size)]
    return jax.tree.map(lambda *xs: np.stack(xs), *members)

  return evaluate


def check_members(directory: str, points: list[dict], seeds: list[int]):
  """Records which members a workdir trains; refuses to resume others."""
  path = os.path.join(directory, 'members.json')
  members = json.loads(json.dumps({'points': points, 'seeds': list(seeds)}))
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    if previous != members:
      raise ValueError(
          f'{directory} holds a run of other members ({previous}); resuming '
          f'it with {members} would mix them. Use another --workdir.')
  else:
    os.makedirs(directory, exist_ok=True)
    report.write_json(path, members)


def _outputs_path(directory: str, step: int) -> str:
  return os.path.join(directory, 'outputs', f'step_{step:08d}.npz')


def _save_outputs(directory: str, step: int, out: dict) -> None:
  """Writes a checkpoint's outputs atomically (a kill leaves no stub)."""
  path = _outputs_path(directory, step)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'wb') as f:
    np.savez(f, **out)
  os.replace(path + '.tmp', path)


def _load_outputs(directory: str, step: int, n_members: int) -> dict:
  path = _outputs_path(directory, step)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} is missing though the run went past step {step}; delete '
        f'{directory} to train this method again.')
  with np.load(path) as f:
    out = {k: f[k] for k in f.files}
  if len(out['target_logits']) != n_members:
    raise ValueError(f'{path} holds {len(out["target_logits"])} members, '
                     f'expected {n_members}; use another --workdir.')
  return out


def run_method(name: str, task, spec: methods.Spec, points: list[dict],
               seeds: list[int], *, workdir: str | None = None,
               checkpoint_every: int = 0, quiet: bool = True) -> MethodRun:
  """Trains every (grid point, seed) of a method and scores checkpoints.

  With a workdir, each checkpoint's outputs (logits and features, what the
  selection scores need) go to workdir/outputs/step_*.npz next to the orbax
  checkpoints of the train state, so a stopped run resumes where it stopped
  and a finished one is only re-scored.

  Args:
    name: the method.
    task: the PDA task.
    spec: network and schedule.
    points: the G grid points (dicts of hyper-parameters).
    seeds: the S seeds.
    workdir: where to keep checkpoints and outputs; None keeps nothing.
    checkpoint_every: steps between train-state checkpoints (a multiple of
      spec.interval); 0 saves at the end (and on SIGTERM) only.
    quiet: no console lines.
  """
  m = methods.method(name)
  arrays = methods.make_arrays(task)
  evaluate = make_evaluate(spec, task)
  tick = time.perf_counter()
  n_seeds = len(seeds)
  checkpoint_steps = list(range(spec.interval, spec.num_steps + 1,
                                spec.interval))
  outputs = [None] * len(points)
  rates = []

  for static_values, indices in _group(m, points).items():
    group_points = [points[i] for i in indices]
    static = dict(zip(m.static, static_values))
    state = init_population(m, spec, task, group_points, seeds)
    sub = None
    if workdir:
      sub = (os.path.join(workdir, '_'.join(map(str, static_values)))
             if m.static else workdir)
      check_members(sub, group_points, seeds)
    checkpoints = {}

    def eval_fn(state, step, checkpoints=checkpoints, sub=sub):
      out = evaluate(state.params)
      checkpoints[step] = out
      if sub:
        _save_outputs(sub, step, out)
      acc = np.mean(np.argmax(out['target_logits'], -1) == task.target.y,
                    axis=1)
      return {'target_accuracy': acc}

    result = loop.train(
        state, population_step(m, spec, arrays, static, state),
        num_steps=spec.num_steps, seed=seeds[0], workdir=sub,
        batch_fn=lambda step: step, log_every=spec.interval,
        checkpoint_every=checkpoint_every, eval_fn=eval_fn,
        eval_every=spec.interval, name=f'pda/{name}', quiet=quiet,
        compiler_options=COMPILER_OPTIONS)
    if result.history:  # A finished run resumed here trained no step.
      rates.append(result.steps_per_second)

    n_members = len(group_points) * n_seeds
    for step in checkpoint_steps:
      if step not in checkpoints:
        checkpoints[step] = _load_outputs(sub, step, n_members)
    for j, i in enumerate(indices):
      outputs[i] = [{k: v[j * n_seeds:(j + 1) * n_seeds]
                     for k, v in checkpoints[step].items()}
                    for step in checkpoint_steps]

  scores = _score_all(task, outputs, n_seeds)
  rate = float(np.mean(rates)) if rates else float('nan')
  return MethodRun(points, list(seeds), scores, rate,
                   time.perf_counter() - tick, checkpoint_steps)


def _score_all(task, outputs, n_seeds) -> dict:
  n_points, n_checkpoints = len(outputs), len(outputs[0])
  scores = {k: np.zeros((n_points, n_seeds, n_checkpoints))
            for k in selection.SELECTIONS}

  # One BLAS thread: on matrices this small, threads spin more than they
  # compute (4x the CPU time of DEV's fits on 2 busy cores).
  with threadpoolctl.threadpool_limits(1):
    for g, s, c in itertools.product(range(n_points), range(n_seeds),
                                     range(n_checkpoints)):
      out = selection.Outputs(**{k: v[s] for k, v in outputs[g][c].items()})
      member = selection.scores(out, task.source_val.y, task.target.y,
                                task.one_shot, task.random_100, seed=s)
      for k, v in member.items():
        scores[k][g, s, c] = v
  return scores


# ---------------------------------------------------------------------------
# Tables.

HEADERS = ('method', 'selection', 'target_acc', 'drop_from_oracle',
           'chosen_hp')


def table_rows(runs: dict) -> tuple[list, dict]:
  """Rows of (method, selection) and results[method][selection].

  Args:
    runs: method -> list of MethodRun (one per task); accuracies are
      averaged over tasks.
  """
  rows, results = [], {}
  for name, task_runs in runs.items():
    chosen = [run.selections() for run in task_runs]
    results[name] = {}
    for sel in selection.SELECTIONS:
      acc = float(np.mean([c[sel]['accuracy'] for c in chosen]))
      results[name][sel] = acc
    for sel in selection.SELECTIONS:
      hp = [task_runs[t].points[c[sel]['grid_index']]
            for t, c in enumerate(chosen)]
      rows.append((name, sel, results[name][sel],
                   results[name]['oracle'] - results[name][sel],
                   json.dumps(hp[0] if len(hp) == 1 else hp,
                              sort_keys=True)))
  return rows, results


def write_tables(rows: list, config: dict, workdir: str) -> dict:
  """Writes table.csv and table.md (with the config) into workdir."""
  os.makedirs(workdir, exist_ok=True)
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(HEADERS)
  writer.writerows(rows)
  csv_path = os.path.join(workdir, 'table.csv')
  with open(csv_path, 'w') as f:
    f.write(buffer.getvalue())
  md_path = os.path.join(workdir, 'table.md')
  with open(md_path, 'w') as f:
    f.write('# PDA: target accuracy by (method, selection)\n\n')
    f.write(report.markdown_table(HEADERS, rows) + '\n\n')
    f.write('Configuration:\n\n```json\n'
            + json.dumps(config, indent=2, sort_keys=True, default=str)
            + '\n```\n')
  report.write_json(os.path.join(workdir, 'config_used.json'), config)
  return {'csv': csv_path, 'markdown': md_path}
