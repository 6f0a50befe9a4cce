"""The probes inside the shared loop: exact pieces, no effect on the path."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common import loop
from geometry import probes
from geometry import quantities

NUM_STEPS = 23


def _problem():
  """A tiny least-squares MLP with odd sizes (inputs 5, hidden 7, out 3)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(41, 5)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(41, 3)), jnp.float32)
  params = {'w1': jnp.asarray(rng.normal(size=(5, 7)) / 2, jnp.float32),
            'w2': jnp.asarray(rng.normal(size=(7, 3)) / 2, jnp.float32)}

  def loss_fn(p, model_state, batch, key):
    del key
    xb, yb = batch
    pred = jnp.tanh(xb @ p['w1']) @ p['w2']
    return jnp.mean((pred - yb) ** 2), (model_state, {})

  def batch_fn(step):
    start = (step * 9) % 32
    return (jax.lax.dynamic_slice_in_dim(x, start, 9),
            jax.lax.dynamic_slice_in_dim(y, start, 9))

  return params, loss_fn, batch_fn, (x, y)


def _train(optimizer, probe_list=(), num_steps=NUM_STEPS):
  params, loss_fn, batch_fn, _ = _problem()
  step_fn = loop.gradient_step(loss_fn, optimizer, probes=probe_list)
  keep = probes.metric_names(probe_list) + ('loss',) if probe_list else (
      'loss',)
  return loop.train(loop.TrainState.create(params, optimizer), step_fn,
                    num_steps=num_steps, seed=0, workdir=None,
                    batch_fn=batch_fn, log_every=num_steps,
                    keep_step_metrics=keep, quiet=True)


@pytest.fixture(scope='module')
def sgd_runs():
  eta = 0.1
  plain = _train(optax.sgd(eta))
  w_star = plain.state.params
  _, _, _, (x, y) = _problem()
  probe_list = [
      probes.StepProbe({'final': w_star}),
      probes.BatchSetProbe({'final': w_star}, (x[None, :20], y[None, :20]),
                           every=5, name='full')]
  measured = _train(optax.sgd(eta), probe_list)
  return eta, plain, measured, w_star


def test_probes_do_not_change_the_trajectory(sgd_runs):
  _, plain, measured, _ = sgd_runs
  for a, b in zip(jax.tree.leaves(plain.state.params),
                  jax.tree.leaves(measured.state.params)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(plain.step_metrics['loss'],
                                measured.step_metrics['loss'])


def test_sgd_identity_along_a_real_run(sgd_runs):
  eta, _, measured, _ = sgd_runs
  geo = probes.geometry_of(measured.step_metrics, 'mb', 'final')
  dist = np.asarray(measured.step_metrics['geo/dist/final'], np.float64)

  # ||w_{t+1} - w*||^2 / ||w_t - w*||^2 = 1 - 2 eta RSI_t + eta^2 EB_t^2.
  predicted = np.asarray(geo.contraction(eta))[:-1]
  actual = dist[1:] ** 2 / dist[:-1] ** 2
  np.testing.assert_allclose(predicted, actual, rtol=1e-5)

  # For plain SGD the displacement is eta times the minibatch gradient.
  disp = probes.geometry_of(measured.step_metrics, 'disp', 'final')
  np.testing.assert_allclose(disp.gamma, geo.gamma, rtol=1e-5)
  np.testing.assert_allclose(disp.grad_norm, eta * geo.grad_norm, rtol=1e-5)


def test_displacement_identity_under_momentum():
  # Any optimizer: w+ = w - u, so the identity holds for u with eta = 1.
  plain = _train(optax.sgd(0.05, momentum=0.9))
  measured = _train(optax.sgd(0.05, momentum=0.9),
                    [probes.StepProbe({'final': plain.state.params})])
  disp = probes.geometry_of(measured.step_metrics, 'disp', 'final')
  dist = np.asarray(measured.step_metrics['geo/dist/final'], np.float64)
  np.testing.assert_allclose(np.asarray(disp.contraction(1.0))[:-1],
                             dist[1:] ** 2 / dist[:-1] ** 2, rtol=1e-5)


def test_pieces_match_an_independent_computation(sgd_runs):
  _, _, measured, w_star = sgd_runs
  params, loss_fn, batch_fn, (x, y) = _problem()

  # Replays the first three SGD steps by hand, in float64 numpy.
  flat = lambda t: np.concatenate([np.asarray(t[k], np.float64).ravel()
                                   for k in sorted(t)])
  w = params
  for step in range(3):
    g = jax.grad(lambda p: loss_fn(p, {}, batch_fn(step), None)[0])(w)
    d = flat(w) - flat(w_star)
    np.testing.assert_allclose(
        measured.step_metrics['geo/mb/inner/final'][step], flat(g) @ d,
        rtol=1e-4)
    np.testing.assert_allclose(
        measured.step_metrics['geo/dist/final'][step], np.linalg.norm(d),
        rtol=1e-5)
    if step % 5 == 0:
      full = jax.grad(lambda p: loss_fn(p, {}, (x[:20], y[:20]), None)[0])(w)
      np.testing.assert_allclose(
          measured.step_metrics['geo/full/inner/final'][step, 0],
          flat(full) @ d, rtol=1e-4)
    w = jax.tree.map(lambda a, b: a - 0.1 * b, w, g)


def test_batch_set_runs_on_schedule(sgd_runs):
  _, _, measured, _ = sgd_runs
  norms = measured.step_metrics['geo/full/grad_norm'][:, 0]
  measured_steps = np.flatnonzero(np.isfinite(norms))
  np.testing.assert_array_equal(measured_steps, np.arange(0, NUM_STEPS, 5))
  # One batch: the mean over the set is that batch.
  np.testing.assert_allclose(
      measured.step_metrics['geo/full/mean/grad_norm'][measured_steps],
      norms[measured_steps], rtol=1e-6)


def test_population_members_use_their_own_reference():
  params, loss_fn, _, (x, y) = _problem()
  stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)
  w_star = jax.tree.map(lambda a: jnp.stack([a * 0, a]), params)
  probe = probes.StepProbe({'final': w_star}, axis_name='m')
  step_fn = loop.gradient_step(loss_fn, optax.sgd(0.1), probes=[probe])
  opt_state = jax.vmap(optax.sgd(0.1).init)(stacked)
  state = loop.TrainState(step=jnp.zeros((), jnp.int32), params=stacked,
                          opt_state=opt_state, model_state={})
  axes = state.replace(step=None, params=0, opt_state=0, model_state=0)
  _, metrics = jax.vmap(step_fn, in_axes=(axes, None, None), out_axes=(
      axes, 0), axis_name='m')(state, (x[:9], y[:9]), jax.random.PRNGKey(0))

  # Member 0: w - 0 = w; member 1: 2w - w = w. Both distances are ||w||.
  norm = quantities.tree_norm(params)
  np.testing.assert_allclose(metrics['geo/dist/final'], [norm, norm],
                             rtol=1e-6)


def test_bad_inputs_give_clear_errors():
  params, _, _, (x, y) = _problem()
  with pytest.raises(ValueError, match='probe set .* is empty'):
    probes.BatchSetProbe({'final': params}, (x[:0], y[:0]), every=3)
  with pytest.raises(ValueError, match='at least one reference'):
    probes.StepProbe({})
  with pytest.raises(ValueError, match='every=0'):
    probes.BatchSetProbe({'final': params}, (x[None], y[None]), every=0)
  with pytest.raises(ValueError, match='empty list of probes'):
    probes.metric_names([])

  # A w* of another shape fails when the step is traced, naming the leaf.
  wrong = {'w1': jnp.zeros((7, 5)), 'w2': params['w2']}
  with pytest.raises(ValueError, match=r"w\* 'final'.*\(7, 5\)"):
    _train(optax.sgd(0.1), [probes.StepProbe({'final': wrong})],
           num_steps=2)


def test_geometry_of_names_missing_metrics(sgd_runs):
  _, _, measured, _ = sgd_runs
  with pytest.raises(KeyError, match='was not recorded'):
    probes.geometry_of(measured.step_metrics, 'mb', 'doubled')
