"""The probes on other lines' training, unchanged: flow matching and PAPA.

* 2-D flow matching (8 Gaussians -> moons), I-CFM against OT-CFM, with the
  loss of `cfm.methods` when that line is importable and otherwise a local
  few-line version of the same two losses.
* One PAPA population: `papa.population.Population`'s own step for the
  first pass; for the second, the same class with the probes attached to its
  member step (a subclass that overrides nothing else), so the measured
  path is PAPA's, checked bit for bit.

Each returns one record per member and a few lines of markdown.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from common import data as data_lib
from common import loop
from common import models
from geometry import plots
from geometry import probes as probes_lib
from geometry import protocol

FLOW_STEPS, FLOW_BATCH, FLOW_SEEDS = 300, 128, (0, 1)
PAPA_STEPS, PAPA_BATCH, PAPA_SEEDS = 300, 64, (0, 1, 2)


def _record(task, dataset, method, batch_size, seed, summary, controls):
  return dict(task=task, dataset=dataset, method=method,
              batch_size=batch_size, seed=int(seed),
              gamma_median=summary['gamma']['q50'],
              frac_gamma_positive=summary['frac_gamma_positive'],
              frac_gamma_positive_early=summary['frac_gamma_positive_early'],
              quantiles={k: summary[k]
                         for k in ('gamma', 'rsi', 'eb', 'eta_star')},
              late_rise_rsi=summary['late_rise_rsi'], controls=controls)


def _join(records, value) -> str:
  return ', '.join(f'{value(r):.3f}' for r in records)


def _records(trajectory, task, dataset, method, batch_size, seeds):
  summaries = {ref: protocol.summarize(
      trajectory.geometry('mb', ref), trajectory.num_steps,
      steps=trajectory.step_metrics['step'])
               for ref in trajectory.references}
  return [_record(task, dataset, method, batch_size, seed,
                  summaries['final'][m],
                  {ref: {'gamma_median': s[m]['gamma']['q50'],
                         'late_rise_rsi': s[m]['late_rise_rsi']}
                   for ref, s in summaries.items() if ref != 'final'})
          for m, seed in enumerate(seeds)]


# ---------------------------------------------------------------------------
# Flow matching.


def _local_flow_loss(method: str, sigma: float, apply_fn):
  """I-CFM / OT-CFM on (x0, x1) batches, used when cfm/ is unavailable.

  The exact OT pairing of a minibatch is a permutation (equal sizes, uniform
  weights); scipy's assignment solver finds it, reached from jit through a
  callback.
  """

  def permutation(x0, x1):
    cost = ((x0[:, None] - x1[None]) ** 2).sum(-1)
    return scipy.optimize.linear_sum_assignment(cost)[1].astype(np.int32)

  def loss_fn(params, model_state, batch, key):
    x0, x1 = batch
    if method == 'otcfm':
      perm = jax.pure_callback(
          permutation, jax.ShapeDtypeStruct((x0.shape[0],), jnp.int32),
          x0, x1, vmap_method='sequential')
      x1 = x1[perm]
    key_t, key_eps = jax.random.split(key)
    t = jax.random.uniform(key_t, (x0.shape[0], 1))
    x_t = (1 - t) * x0 + t * x1 + sigma * jax.random.normal(key_eps, x0.shape)
    loss = jnp.mean(jnp.sum((apply_fn(params, t[:, 0], x_t) - (x1 - x0)) ** 2,
                            -1))
    return loss, (model_state, {})

  return loss_fn


def flow_setup(method: str, *, num_steps=FLOW_STEPS, batch_size=FLOW_BATCH,
               seeds=FLOW_SEEDS, sigma: float = 0.1):
  """A population of 2-D flow-matching runs: (Setup, where the loss came
  from)."""
  model = models.TimeMLP(width=64, depth=3, out_dim=2)
  apply_fn = lambda p, t, x, y=None: model.apply(p, t, x)
  source = data_lib.distribution('8gaussians')
  target = data_lib.distribution('moons')
  try:
    from cfm import methods as cfm_methods  # pylint: disable=g-import-not-at-top
    matcher = cfm_methods.make_matcher(method, sigma)

    def loss_fn(params, model_state, batch, key):
      x0, x1 = batch
      loss, aux = matcher.loss(apply_fn, params, cfm_methods.Pairs(x0, x1),
                               key)
      return loss, (model_state, aux)

    origin = '`cfm.methods.make_matcher(...).loss`'
  except (ImportError, AttributeError, TypeError) as error:
    loss_fn = _local_flow_loss(method, sigma, apply_fn)
    origin = f'a local I-CFM / OT-CFM loss (cfm/ unusable: {error})'

  data_keys = jnp.stack([jax.random.PRNGKey(1000 + s) for s in seeds])

  def draw(key):
    key_0, key_1 = jax.random.split(key)
    return source(key_0, batch_size), target(key_1, batch_size)

  def batch_fn(step):
    return jax.vmap(lambda k: draw(jax.random.fold_in(k, step)))(data_keys)

  x = jnp.zeros((1, 2))
  params = jax.vmap(lambda s: model.init(jax.random.PRNGKey(s), jnp.zeros(1),
                                         x))(jnp.asarray(seeds))
  probe_batches = jax.vmap(draw)(jax.random.split(jax.random.PRNGKey(99), 2))
  setup = protocol.Setup(
      loss_fn=loss_fn, optimizer=optax.adam(1e-3), params=params,
      batch_fn=batch_fn, num_steps=num_steps, probe_batches=probe_batches,
      probe_every=max(1, num_steps // 20))
  return setup, origin


def flow_demo(workdir: str):
  """I-CFM against OT-CFM; returns (records, markdown lines)."""
  records, series, origin = [], {}, ''
  for method in ('icfm', 'otcfm'):
    setup, origin = flow_setup(method)
    trajectory = protocol.run(setup, controls=('doubled', 'other_seed',
                                               'random'))
    records += _records(trajectory, 'cfm', '8gaussians->moons', method,
                        FLOW_BATCH, FLOW_SEEDS)
    series[method] = (trajectory.step_metrics['step'],
                      trajectory.geometry('mb', 'final'))
    series[f'{method}, probe set'] = (trajectory.step_metrics['step'],
                                      trajectory.geometry('probe/mean',
                                                          'final'))
  path = plots.trajectory_figure(
      os.path.join(workdir, 'flow_matching.png'), series,
      title='2-D flow matching, 8 Gaussians -> moons: I-CFM vs OT-CFM')
  lines = [
      f'**2-D flow matching** (8 Gaussians -> moons, TimeMLP 3 x 64, Adam '
      f'1e-3, batch {FLOW_BATCH}, {FLOW_STEPS} steps, seeds {FLOW_SEEDS}; '
      f'loss: {origin}). Not in the paper; minibatch gradient vs the final '
      'iterate:', '']
  for method in ('icfm', 'otcfm'):
    rs = [r for r in records if r['method'] == method]
    lines.append(
        f'- {method}: gamma median {_join(rs, lambda r: r["gamma_median"])};'
        ' fraction > 0 before the last 10%: '
        f'{_join(rs, lambda r: r["frac_gamma_positive_early"])}; late RSI '
        f'rise x{_join(rs, lambda r: r["late_rise_rsi"])}; other-seed '
        'control gamma '
        f'{_join(rs, lambda r: r["controls"]["other_seed"]["gamma_median"])}'
        '.')
  lines += ['', f'![flow matching](geometry/{os.path.basename(path)})', '']
  return records, lines


# ---------------------------------------------------------------------------
# PAPA.


def papa_demo(workdir: str):
  """One PAPA population on digits; returns (records, markdown lines)."""
  del workdir
  from papa import models as papa_models  # pylint: disable=g-import-not-at-top
  from papa import population as papa_population  # pylint: disable=g-import-not-at-top
  from papa import regularisers  # pylint: disable=g-import-not-at-top

  dataset = data_lib.load('digits', seed=0)
  seeds = np.asarray(PAPA_SEEDS)
  kwargs = dict(
      member_seeds=seeds, group_size=len(seeds),
      optimizer=optax.sgd(0.1), learning_rate_fn=optax.constant_schedule(0.1),
      batch_size=PAPA_BATCH,
      hyper=regularisers.member_combinations(regularisers.DEFAULT_GRID,
                                             seeds),
      methods=papa_population.Method('papa', every=10, a=0.99))
  model = papa_models.make_model('mlp', dataset.num_classes, widths=(64, 64))

  class Probed(papa_population.Population):
    """PAPA's population with probes on its member step, nothing else."""
    probes = ()

    def member_step(self, state, batch, key):
      step = loop.gradient_step(self.loss_fn, self.optimizer,
                                probes=self.probes)
      return step(state, batch, key)

  plain = papa_population.Population(model, dataset.train,
                                     dataset.num_classes, **kwargs)

  # PAPA vmaps its members without an axis name: the batch says who is who.
  def batch_fn(step):
    return dict(plain.batch_fn(step), member=jnp.arange(len(seeds)))

  def step_for(probes):
    if not probes:
      return plain.step_fn
    probed = Probed(model, dataset.train, dataset.num_classes, **kwargs)
    probed.probes = probes
    return probed.step_fn

  member_of = lambda view: view.batch['member']
  trajectory = protocol.two_pass(
      init_fn=plain.init, step_for=step_for,
      probes_for=lambda refs: [probes_lib.StepProbe(refs,
                                                    member_of=member_of)],
      batch_fn=batch_fn, num_steps=PAPA_STEPS)
  records = _records(trajectory, 'papa', 'digits', 'papa', PAPA_BATCH,
                     PAPA_SEEDS)
  first = records[0]
  lines = [
      f'**PAPA population member** (digits, MLP 64-64, {len(seeds)} members '
      f'pulled to their mean with a = 0.99 every 10 steps, per-member '
      f'regularisers, SGD 0.1, batch {PAPA_BATCH}, {PAPA_STEPS} steps; '
      "papa's own step in the first pass, the same class with probes on "
      'its member step in the second, bit-exact). Member 0: gamma median '
      f'{first["gamma_median"]:.3f}, fraction > 0 before the last 10% '
      f'{first["frac_gamma_positive_early"]:.3f}, other-member control '
      f'gamma {first["controls"]["other_seed"]["gamma_median"]:.3f} (the '
      'members are pulled together, yet each step still turns slightly away '
      'from another member\'s end point). All members: gamma median '
      f'{_join(records, lambda r: r["gamma_median"])}. The '
      'averaging moves the weights outside the gradient step, so only the '
      'gradient part of each step is measured.', '']
  return records, lines


def run_all(workdir: str):
  """Both demos; a demo whose line cannot be used is reported, not fatal."""
  records, lines = [], []
  for name, demo in (('flow matching', flow_demo), ('PAPA', papa_demo)):
    try:
      demo_records, demo_lines = demo(workdir)
    except (ImportError, AttributeError, TypeError) as error:
      # The other lines evolve on their own; their API moving must not sink
      # this line's report, but it is said plainly.
      lines += [f'*{name}: not run, its line\'s API is not usable here '
                f'({type(error).__name__}: {error}).*', '']
      continue
    records += demo_records
    lines += demo_lines
  return records, lines

