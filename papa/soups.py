"""Final models of a population: members, logit ensemble, uniform and greedy
soups, and BatchNorm statistics recomputed after averaging.

A population here is one group of P members: `params` and `model_state`
leaves carry a leading axis P. A soup is a weighted average of the members'
parameters; its BatchNorm statistics (if any) are re-estimated on training
data, since the average of running statistics is not the statistics of the
averaged network.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common import data as data_lib
from papa import models

PyTree = Any


# ---------------------------------------------------------------------------
# Predictions.


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, params, model_state, x):
  return model.apply({'params': params, **model_state}, x, train=False)


def predict(model: nn.Module, params, model_state, x: np.ndarray, *,
            batch_size: int = 2000) -> np.ndarray:
  """Logits (n, classes) of one model, in chunks of batch_size examples."""
  chunks = [_logits(model, params, model_state, x[i:i + batch_size])
            for i in range(0, len(x), batch_size)]
  return np.concatenate([np.asarray(c) for c in chunks])


@functools.partial(jax.jit, static_argnums=0)
def _population_logits(model, params, model_state, x):
  return jax.vmap(lambda p, s: model.apply({'params': p, **s}, x,
                                           train=False))(params, model_state)


def predict_population(model: nn.Module, params, model_state,
                       x: np.ndarray, *, batch_size: int = 2000
                       ) -> np.ndarray:
  """Logits (P, n, classes) of every member."""
  chunks = [_population_logits(model, params, model_state,
                               x[i:i + batch_size])
            for i in range(0, len(x), batch_size)]
  return np.concatenate([np.asarray(c) for c in chunks], axis=1)


def accuracy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Fraction correct along the example axis; logits (..., n, classes)."""
  return np.mean(np.argmax(logits, -1) == y, axis=-1)


def ensemble_accuracy(member_logits: np.ndarray, y: np.ndarray) -> float:
  """Accuracy of the mean of the members' logits; logits (P, n, classes)."""
  return float(accuracy(member_logits.mean(axis=0), y))


# ---------------------------------------------------------------------------
# Soups.


def weighted_mean(params: PyTree, weights: jax.Array) -> PyTree:
  """sum_j weights_j w_j / sum_j weights_j over the leading member axis."""
  weights = weights / jnp.sum(weights)
  return jax.tree.map(
      lambda w: jnp.tensordot(weights.astype(w.dtype), w, axes=1), params)


@functools.partial(jax.jit, static_argnums=(0, 4))
def recompute_batch_stats(model: nn.Module, params, model_state,
                          x_batches: jax.Array, bn_momentum_name: str
                          = 'bn_momentum'):
  """BatchNorm statistics of `params` re-estimated on training batches.

  Runs the model in training mode with momentum 0 (so each pass writes that
  batch's statistics exactly) on every batch of x_batches (nb, B, ...) and
  averages the per-batch means and variances, as torch's `update_bn` does.

  Returns:
    A model_state of the same structure with fresh 'batch_stats'.
  """
  probe = model.clone(**{bn_momentum_name: 0.0})

  def one(_, x):
    _, updates = probe.apply({'params': params, **model_state}, x,
                             train=True, mutable=['batch_stats'])
    return None, updates['batch_stats']

  _, stats = jax.lax.scan(one, None, x_batches)
  return dict(model_state,
              batch_stats=jax.tree.map(lambda s: s.mean(axis=0), stats))


def stat_batches(x: np.ndarray, *, batch_size: int = 256,
                 max_batches: int = 8) -> np.ndarray:
  """The first training batches used to re-estimate statistics, (nb, B, ...).

  Fixed (not random) so every model is re-estimated on the same examples.
  """
  batch_size = min(batch_size, len(x))
  nb = max(1, min(max_batches, len(x) // batch_size))
  return np.asarray(x[:nb * batch_size]).reshape(
      (nb, batch_size) + x.shape[1:])


def finalize(model: nn.Module, params, model_state, x_stats) -> PyTree:
  """model_state with BatchNorm statistics recomputed, if the model has any."""
  if not models.has_batch_norm(model) or 'batch_stats' not in model_state:
    return model_state
  return recompute_batch_stats(model, params, model_state, x_stats)


@dataclasses.dataclass(frozen=True)
class PopulationScores:
  """Test accuracies of a population's final models (fractions).

  Attributes:
    members: (P,) each member's test accuracy.
    ensemble: the mean-logit ensemble.
    uniform_soup: the uniform average of all members.
    greedy_soup: the greedy soup.
    greedy_members: indices of the members the greedy soup kept.
    validation: (P,) each member's held-out accuracy (the greedy order).
  """
  members: np.ndarray
  ensemble: float
  uniform_soup: float
  greedy_soup: float
  greedy_members: tuple
  validation: np.ndarray

  def as_dict(self) -> dict:
    return dict(member_mean=float(self.members.mean()),
                member_min=float(self.members.min()),
                member_max=float(self.members.max()),
                ensemble=self.ensemble, uniform_soup=self.uniform_soup,
                greedy_soup=self.greedy_soup,
                greedy_size=len(self.greedy_members))


def score_population(model: nn.Module, params, model_state,
                     validation: data_lib.Split, test: data_lib.Split,
                     x_stats: np.ndarray, *, averaged: bool = True
                     ) -> PopulationScores:
  """Members, ensemble, uniform soup and greedy soup of one population.

  Args:
    model: the classifier.
    params, model_state: the population's variables, leaves (P, ...).
    validation: held-out split that orders and selects the greedy soup.
    test: split the accuracies are reported on.
    x_stats: training batches (nb, B, ...) for BatchNorm statistics.
    averaged: the members came out of averaging, so their BatchNorm
      statistics are recomputed too (soups' always are).
  """
  P = jax.tree.leaves(params)[0].shape[0]
  if averaged:
    model_state = jax.vmap(lambda p, s: finalize(model, p, s, x_stats))(
        params, model_state)
  val_logits = predict_population(model, params, model_state, validation.x)
  test_logits = predict_population(model, params, model_state, test.x)
  val_acc = accuracy(val_logits, validation.y)

  def soup_accuracy(weights, split):
    soup = weighted_mean(params, jnp.asarray(weights, jnp.float32))
    state = finalize(model, soup, jax.tree.map(lambda s: s[0], model_state),
                     x_stats)
    return float(accuracy(predict(model, soup, state, split.x), split.y))

  # Greedy soup: best held-out member first; keep an ingredient only if the
  # held-out accuracy strictly rises.
  order = np.argsort(-val_acc, kind='stable')
  weights = np.zeros(P)
  weights[order[0]] = 1.0
  best = float(val_acc[order[0]])
  for j in order[1:]:
    trial = weights.copy()
    trial[j] = 1.0
    score = soup_accuracy(trial, validation)
    if score > best:
      weights, best = trial, score

  return PopulationScores(
      members=accuracy(test_logits, test.y),
      ensemble=ensemble_accuracy(test_logits, test.y),
      uniform_soup=soup_accuracy(np.ones(P), test),
      greedy_soup=soup_accuracy(weights, test),
      greedy_members=tuple(int(j) for j in np.flatnonzero(weights)),
      validation=val_acc)
