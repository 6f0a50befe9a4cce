"""Populations of seeded classifier runs, ready for the two-pass protocol.

`classifier_setup` builds a `protocol.Setup` for an MLP on an array dataset
(MNIST-1D, digits, ...): the seeds of the population are vmapped into one
jitted program, each with its own initial weights and batch order.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import data as data_lib
from common import models
from geometry import protocol

OPTIMIZERS = ('sgd', 'momentum', 'adam')
SCHEDULES = ('constant', 'cosine', 'step')


def schedule(name: str, learning_rate: float, num_steps: int):
  """The learning-rate schedule by name, over a budget of num_steps."""
  if name == 'constant':
    return optax.constant_schedule(learning_rate)
  if name == 'cosine':
    return optax.cosine_decay_schedule(learning_rate, num_steps)
  if name == 'step':
    # Divided by 10 at half and at three quarters of the budget.
    return optax.piecewise_constant_schedule(
        learning_rate, {num_steps // 2: 0.1, 3 * num_steps // 4: 0.1})
  raise ValueError(f'Unknown schedule {name!r}; choose one of '
                   f'{list(SCHEDULES)}.')


def optimizer(name: str, learning_rate_fn) -> optax.GradientTransformation:
  """'sgd' (plain), 'momentum' (heavy ball, 0.9) or 'adam'."""
  if name == 'sgd':
    return optax.sgd(learning_rate_fn)
  if name == 'momentum':
    return optax.sgd(learning_rate_fn, momentum=0.9)
  if name == 'adam':
    return optax.adam(learning_rate_fn)
  raise ValueError(f'Unknown optimizer {name!r}; choose one of '
                   f'{list(OPTIMIZERS)}.')


def classification_loss(model):
  """Mean cross-entropy of `model` in the loop's loss_fn signature."""

  def loss_fn(params, model_state, batch, key):
    del key
    x, y = batch
    logits = model.apply(params, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    return loss, (model_state, {'accuracy': accuracy})

  return loss_fn


def classifier_setup(dataset: data_lib.ArrayDataset, *, seeds, widths,
                     batch_size: int, num_steps: int, learning_rate: float,
                     optimizer_name: str = 'sgd',
                     schedule_name: str = 'constant', probe_every: int = 50,
                     num_probe_batches: int = 4, probe_batch_size: int = 256,
                     full_batch: bool = True) -> protocol.Setup:
  """A population of MLP classifiers, one member per seed.

  Args:
    dataset: the data; its train split lives on the device whole.
    seeds: member m starts from init(PRNGKey(seeds[m])) and draws its batch
      order from PRNGKey(seeds[m] + 1).
    widths: hidden layer widths of the MLP.
    batch_size: minibatch size of every member.
    num_steps: the budget T.
    learning_rate: the schedule's base value.
    optimizer_name: one of OPTIMIZERS.
    schedule_name: one of SCHEDULES.
    probe_every: steps between fixed-batch measurements.
    num_probe_batches: B fixed batches (0 skips them).
    probe_batch_size: examples per fixed batch.
    full_batch: measure the full-batch gradient once an epoch.

  Returns:
    A `protocol.Setup`.
  """
  x = jnp.asarray(dataset.train.x)
  y = jnp.asarray(dataset.train.y)
  n = len(y)
  if batch_size > n:
    raise ValueError(f'batch_size={batch_size} exceeds the {n} training '
                     f'examples of {dataset.name}.')
  model = models.MLP(dataset.num_classes, tuple(widths))
  seeds = jnp.asarray(seeds)
  # Jitted: eager initialisation dispatches (and compiles) op by op.
  params = jax.jit(jax.vmap(
      lambda s: model.init(jax.random.PRNGKey(s), x[:1])))(seeds)
  order_keys = jax.jit(jax.vmap(lambda s: jax.random.PRNGKey(s + 1)))(seeds)

  def batch_fn(step):
    indices = jax.vmap(
        lambda k: data_lib.batch_indices(k, step, n, batch_size))(order_keys)
    return x[indices], y[indices]

  # Fixed probe batches: the same examples for every member and step.
  probe_batches = None
  if num_probe_batches:
    size = min(probe_batch_size, n // num_probe_batches)
    pick = np.random.default_rng(12345).permutation(n)
    pick = pick[:num_probe_batches * size].reshape(num_probe_batches, size)
    probe_batches = (x[pick], y[pick])

  learning_rate_fn = schedule(schedule_name, learning_rate, num_steps)
  return protocol.Setup(
      loss_fn=classification_loss(model),
      optimizer=optimizer(optimizer_name, learning_rate_fn),
      params=params, batch_fn=batch_fn, num_steps=num_steps,
      learning_rate_fn=learning_rate_fn, probe_batches=probe_batches,
      probe_every=probe_every,
      full_batch=(x[None], y[None]) if full_batch else None,
      steps_per_epoch=data_lib.steps_per_epoch(n, batch_size))
