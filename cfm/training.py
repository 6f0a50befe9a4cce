"""Training and evaluating a flow-matching model on the shared loop.

`train_flow(config, workdir)` is what the launcher and the main job call;
its pieces (`make_data`, `make_model`, `evaluate_flow`) are importable on
their own.
"""

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cfm import couplings
from cfm import evaluation
from cfm import methods
from cfm import sampling
from common import data as data_lib
from common import loop
from common import models

# Salt that separates the data's random stream from the step's.
_DATA_STREAM = 0x5EED
_COUPLING_STREAM = 0xC0DE


@dataclasses.dataclass(frozen=True)
class FlowData:
  """Where x0 and x1 come from.

  Attributes:
    pairs_at: `step -> Pairs`, traceable; the uncoupled minibatch of a step.
    test_set: `(key, n) -> (x0 (n, d), x1 (n, d), y1 (n,) or None)` held-out
      samples (a fixed test split for image datasets).
    other_targets: `(key, n) -> (n, d)`, a second target set independent of
      the test targets, for the W2 noise floor (fresh draws for samplers,
      training images for a dataset).
    dim: flattened sample size d.
    example_shape: shape of one sample.
    num_classes: labels for class-conditional generation (0: none).
  """
  pairs_at: Callable
  test_set: Callable
  other_targets: Callable
  dim: int
  example_shape: tuple
  num_classes: int


def _image_target(name: str, seed: int):
  dataset = data_lib.load(name, seed=seed)
  # Images in [0, 1] are mapped to [-1, 1], the range of a standard normal's
  # bulk, so that source and target have similar scales.
  train_x = jnp.asarray(dataset.train.x * 2 - 1)
  train_y = jnp.asarray(dataset.train.y)
  test_x = np.asarray(dataset.test.x * 2 - 1)
  return dataset, train_x, train_y, test_x


def make_data(source: str, target: str, batch_size: int, seed: int,
              class_conditional: bool = False) -> FlowData:
  """Builds the minibatch and test-set samplers of a source -> target task."""
  data_key = jax.random.fold_in(jax.random.PRNGKey(seed), _DATA_STREAM)
  sample_source = data_lib.distribution(source)

  if target in data_lib.DISTRIBUTIONS:
    if class_conditional:
      raise ValueError(f'class_conditional needs a labelled target dataset '
                       f'such as digits, not {target!r}.')
    sample_target = data_lib.distribution(target)
    probe = sample_target(jax.random.PRNGKey(0), 1)
    if source == 'normal':
      sample_source = lambda key, n: data_lib.sample_normal(
          key, n, probe.shape[1])

    def pairs_at(step):
      key_0, key_1 = jax.random.split(jax.random.fold_in(data_key, step))
      return methods.Pairs(sample_source(key_0, batch_size),
                           sample_target(key_1, batch_size))

    def test_set(key, n):
      key_0, key_1 = jax.random.split(key)
      return (np.asarray(sample_source(key_0, n)),
              np.asarray(sample_target(key_1, n)), None)

    def other_targets(key, n):
      return np.asarray(sample_target(key, n))

    return FlowData(pairs_at, test_set, other_targets, probe.shape[1],
                    probe.shape[1:], 0)

  if source != 'normal':
    raise ValueError(f'An image target ({target!r}) is generated from a '
                     f'normal source; got source={source!r}.')
  dataset, train_x, train_y, test_x = _image_target(target, seed)
  n_train, dim = len(train_y), int(np.prod(dataset.example_shape))

  def pairs_at(step):
    key_0 = jax.random.fold_in(data_key, step)
    idx = data_lib.batch_indices(data_key, step, n_train, batch_size)
    x1 = train_x[idx].reshape(batch_size, dim)
    return methods.Pairs(jax.random.normal(key_0, (batch_size, dim)), x1,
                         train_y[idx] if class_conditional else None)

  def test_set(key, n):
    del n  # The test split has a fixed size.
    x1 = test_x.reshape(len(test_x), dim)
    x0 = np.asarray(jax.random.normal(key, x1.shape))
    y1 = dataset.test.y if class_conditional else None
    return x0, x1, y1

  def other_targets(key, n):
    idx = jax.random.choice(key, n_train, (min(n, n_train),), replace=False)
    return np.asarray(train_x[idx]).reshape(-1, dim)

  return FlowData(pairs_at, test_set, other_targets, dim,
                  dataset.example_shape,
                  dataset.num_classes if class_conditional else 0)


def make_model(data: FlowData, matcher: methods.FlowMatcher, width: int,
               depth: int) -> models.TimeMLP:
  out_dim = data.dim * (2 if matcher.learn_score else 1)
  return models.TimeMLP(width=width, depth=depth, out_dim=out_dim,
                        num_classes=data.num_classes)


def coupled_pairs_fn(pairs_at: Callable, matcher: methods.FlowMatcher,
                     seed: int) -> Callable[[int], methods.Pairs]:
  """`step -> coupled Pairs` computed on the host side, ahead of training.

  A minibatch coupling depends only on the data, so the loop runs this in a
  background thread while the device trains on earlier batches: the exact
  assignment runs in scipy (which releases no work to the step), Sinkhorn in
  its own jitted call. Randomness comes from (seed, step), as everywhere.
  """
  coupling_key = jax.random.fold_in(jax.random.PRNGKey(seed), _COUPLING_STREAM)

  @jax.jit
  def couple(step, perm):
    pairs = pairs_at(step)
    if perm is not None:
      pairs = dataclasses.replace(pairs, perm=perm)
    return matcher.couple(jax.random.fold_in(coupling_key, step), pairs)

  pairs_jit = jax.jit(pairs_at)

  def host_pairs(step: int) -> methods.Pairs:
    if not matcher.needs_host_permutation:
      return jax.device_get(couple(step, None))
    pairs = jax.device_get(pairs_jit(step))
    perm = couplings.exact_permutation_host(pairs.x0, pairs.x1)
    if matcher.coupling == 'exact_resample':
      return jax.device_get(couple(step, perm))
    # The exact permutation only reorders the targets: no device work.
    return methods.Pairs(pairs.x0, pairs.x1[perm],
                         None if pairs.y1 is None else pairs.y1[perm])

  return host_pairs


@functools.partial(jax.jit, static_argnames=(
    'model', 'dim', 'solver', 'rtol', 'atol', 'num_steps', 'num_saved',
    'sde_sigma'))
def generate(model, params, x0: jax.Array, y: jax.Array | None,
             key: jax.Array, *, dim: int, solver: str = 'dopri5',
             rtol: float = 1e-4, atol: float = 1e-4, num_steps: int = 100,
             num_saved: int = 11,
             sde_sigma: float | None = None) -> sampling.Solution:
  """Pushes source points x0 (n, dim) through the learned flow to t = 1.

  With `sde_sigma`, integrates the SDE dx = (v + s) dt + sigma dW (SF2M);
  otherwise the ODE dx = v dt. Jitted once per model and setting, so the
  methods of one comparison share the compiled solver.
  """
  def vector_field(t, x):
    out = model.apply(params, jnp.full((x.shape[0],), t), x, y)
    return out[:, :dim] if sde_sigma is None else out[:, :dim] + out[:, dim:]

  if sde_sigma is None:
    return sampling.integrate_ode(vector_field, x0, solver=solver, rtol=rtol,
                                  atol=atol, num_steps=num_steps,
                                  num_saved=num_saved)
  return sampling.integrate_sde(vector_field, x0, sde_sigma, key,
                                num_steps=num_steps, num_saved=num_saved)


def _generate_test(model, params, data: FlowData, num_samples: int,
                   key: jax.Array, **solver_kwargs):
  """Held-out (x0, x1) and the flow's samples from x0."""
  key_test, _, key_sde = jax.random.split(key, 3)
  x0, x1, y1 = data.test_set(key_test, num_samples)
  y = None if y1 is None else jnp.asarray(y1)
  solution = generate(model, params, jnp.asarray(x0), y, key_sde,
                      dim=data.dim, **solver_kwargs)
  if not np.all(np.isfinite(np.asarray(solution.x))):
    raise FloatingPointError('Generated samples contain NaN or inf; the '
                             'trained flow is unstable.')
  return x0, x1, solution


def generated_w2(model, params, data: FlowData, *, num_samples: int,
                 key: jax.Array, **solver_kwargs) -> float:
  """W2 of the flow's samples alone, for a second sampler of one model.

  `evaluate_flow` also measures the noise floor and the source-target W2,
  which do not depend on the sampler; this skips those two solves.
  """
  _, x1, solution = _generate_test(model, params, data, num_samples, key,
                                   **solver_kwargs)
  return evaluation.wasserstein2(np.asarray(solution.x), x1)


def evaluate_flow(model, params, data: FlowData, *, num_samples: int,
                  key: jax.Array, solver: str = 'dopri5', rtol: float = 1e-4,
                  atol: float = 1e-4, num_steps: int = 100,
                  num_saved: int = 11, sde_sigma: float | None = None,
                  ) -> tuple[evaluation.FlowEvaluation, sampling.Solution]:
  """Generates from held-out source samples and scores them (see generate)."""
  x0, x1, solution = _generate_test(
      model, params, data, num_samples, key, solver=solver, rtol=rtol,
      atol=atol, num_steps=num_steps, num_saved=num_saved,
      sde_sigma=sde_sigma)
  _, key_floor, _ = jax.random.split(key, 3)
  x1_other = data.other_targets(key_floor, len(x1))
  generated = np.asarray(solution.x)
  result = evaluation.FlowEvaluation(
      w2=evaluation.wasserstein2(generated, x1),
      w2_noise_floor=evaluation.wasserstein2(x1_other, x1),
      path_energy=float(np.mean(solution.path_energy)),
      w2_source_target=evaluation.wasserstein2(x0, x1),
      nfe=int(solution.nfe))
  return result, solution


def train_flow(config, workdir: str | None, *, quiet: bool = False):
  """Trains one method on one task; returns (TrainResult, model, data, matcher)."""
  matcher = methods.make_matcher(
      config.method, config.sigma, coupling=config.coupling,
      source=config.source, epsilon=config.epsilon or None,
      marginal_penalty=config.marginal_penalty, mass=config.mass)
  data = make_data(config.source, config.target, config.train.batch_size,
                   config.seed, config.class_conditional)
  model = make_model(data, matcher, config.model.width, config.model.depth)

  n = config.train.batch_size
  dummy_y = jnp.zeros((n,), jnp.int32) if data.num_classes else None
  params = model.init(jax.random.PRNGKey(config.seed), jnp.zeros((n,)),
                      jnp.zeros((n, data.dim)), dummy_y)
  optimizer = optax.adam(config.train.learning_rate)

  # Pairs arrive coupled: the independent coupling needs no work and is
  # drawn inside the jitted step, the others are computed ahead on the host.
  def loss_fn(params, model_state, pairs, key):
    loss, metrics = matcher.regression_loss(model.apply, params, pairs, key)
    return loss, (model_state, metrics)

  if matcher.coupling == 'independent':
    batch_kwargs = {'batch_fn': data.pairs_at}
  else:
    batch_kwargs = {'host_batch_fn': coupled_pairs_fn(
        data.pairs_at, matcher, config.seed)}
  result = loop.train(
      loop.TrainState.create(params, optimizer),
      loop.gradient_step(loss_fn, optimizer), num_steps=config.train.num_steps,
      seed=config.seed, workdir=workdir, log_every=config.train.log_every,
      checkpoint_every=config.train.checkpoint_every, name=config.method,
      quiet=quiet, **batch_kwargs)
  return result, model, data, matcher
