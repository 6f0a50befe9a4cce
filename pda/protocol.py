"""The evaluation protocol: grid x seeds x tasks -> a table of selections.

For one method on one task, every grid point and seed is one member of a
population trained by a single vmapped, jitted program (members that share
the method's static hyper-parameters), through `common.loop.train`. At each
checkpoint (every `spec.interval` steps) the host records every member's
logits and features; afterwards each selection strategy scores every
(grid point, seed, checkpoint) and `selection.select` picks hyper-parameters
then checkpoints. The table reports, per (method, selection), the chosen
models' target accuracy averaged over seeds and tasks, and its drop from the
oracle.
"""

import csv
import dataclasses
import io
import itertools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

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
  """
  points: list
  seeds: list
  scores: dict
  steps_per_second: float
  seconds: float

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


def init_population(m: methods.Method, spec: methods.Spec, task,
                    points: list[dict], seeds: list[int]):
  """The stacked train state of len(points) * len(seeds) members."""
  keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(seed), g)
                    for g in range(len(points)) for seed in seeds])
  # Same seed, same initial network across grid points: only hp differ.
  init_keys = jnp.stack([jax.random.PRNGKey(seed) for _ in points
                         for seed in seeds])
  params = jax.vmap(lambda k: methods.init_params(spec, k,
                                                  task.example_shape))(
                                                      init_keys)
  hp_names = sorted(k for k in points[0] if k not in m.static)
  hp = {k: jnp.asarray([p[k] for p in points for _ in seeds], jnp.float32)
        for k in hp_names}
  n_members = len(points) * len(seeds)
  aux = {'class_weight': jnp.ones((n_members, spec.num_classes)),
         'w': jnp.ones((n_members, len(task.source_train)))}
  opt = methods.optimizer(spec)
  state = loop.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=jax.vmap(opt.init)(params),
                          model_state={'hp': hp, 'aux': aux, 'key': keys})
  return state


def _state_axes(state):
  return loop.TrainState(step=None, params=0, opt_state=0, model_state=0)


def population_step(m, spec, arrays, static, state):
  one = methods.step_fn(m, spec, arrays, static)
  axes = _state_axes(state)
  return jax.vmap(one, in_axes=(axes, None, None), out_axes=(axes, 0))


def make_evaluate(spec: methods.Spec, task):
  """Jitted (P-member params) -> every member's logits and features."""
  xs_val = jnp.asarray(task.source_val.x)
  xs = jnp.asarray(task.source_train.x)
  xt = jnp.asarray(task.target.x)

  def one(params):
    g_v = methods.features(spec, params, xs_val)
    g_t = methods.features(spec, params, xt)
    return dict(source_val_logits=methods.classify(spec, params, g_v),
                source_val_features=g_v,
                source_train_features=methods.features(spec, params, xs),
                target_logits=methods.classify(spec, params, g_t),
                target_features=g_t)

  return jax.jit(jax.vmap(one))


def run_method(name: str, task, spec: methods.Spec, points: list[dict],
               seeds: list[int], *, workdir: str | None = None,
               quiet: bool = True) -> MethodRun:
  """Trains every (grid point, seed) of a method and scores checkpoints."""
  m = methods.method(name)
  arrays = methods.make_arrays(task)
  evaluate = make_evaluate(spec, task)
  tick = time.perf_counter()
  n_seeds = len(seeds)
  outputs = [None] * len(points)
  rates = []

  for static_values, indices in _group(m, points).items():
    group_points = [points[i] for i in indices]
    static = dict(zip(m.static, static_values))
    state = init_population(m, spec, task, group_points, seeds)
    checkpoints = []

    def eval_fn(state, step, checkpoints=checkpoints):
      del step
      out = jax.device_get(evaluate(state.params))
      checkpoints.append(out)
      acc = np.mean(np.argmax(out['target_logits'], -1) == task.target.y,
                    axis=1)
      return {'target_accuracy': acc}

    sub = (os.path.join(workdir, f'{name}_{"_".join(map(str, static_values))}'
                        ) if workdir and m.static else workdir)
    result = loop.train(
        state, population_step(m, spec, arrays, static, state),
        num_steps=spec.num_steps, seed=seeds[0], workdir=sub,
        batch_fn=lambda step: step, log_every=spec.interval,
        eval_fn=eval_fn, eval_every=spec.interval, name=f'pda/{name}',
        quiet=quiet)
    rates.append(result.steps_per_second)
    for j, i in enumerate(indices):
      outputs[i] = [{k: v[j * n_seeds:(j + 1) * n_seeds]
                     for k, v in c.items()} for c in checkpoints]

  scores = _score_all(task, outputs, n_seeds)
  return MethodRun(points, list(seeds), scores, float(np.mean(rates)),
                   time.perf_counter() - tick)


def _score_all(task, outputs, n_seeds) -> dict:
  n_points, n_checkpoints = len(outputs), len(outputs[0])
  scores = {k: np.zeros((n_points, n_seeds, n_checkpoints))
            for k in selection.SELECTIONS}
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
