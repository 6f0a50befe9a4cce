"""Weight averaging of a population: the mathematics of PAPA.

Every function here is pure and acts on a pytree whose leaves carry a
leading population axis of size P (member j is `leaf[j]`). They are
traceable, so they run inside the jitted training step, and they work on a
population axis sharded across devices (the mean becomes an all-reduce).

Methods of Jolicoeur-Martineau et al., "PopulAtion Parameter Averaging
(PAPA)", TMLR 2024:

* PAPA: every k steps, w_j <- a w_j + (1 - a) mean_i(w_i)  (`pull`);
* PAPA-all: every T epochs, w_j <- mean_i(w_i)  (`replace_with_mean`);
* PAPA-2: every T epochs, w_j <- (w_j + w_pi(j)) / 2 for a random pairing pi
  into disjoint pairs  (`random_partners`, `average_with_partners`).
"""

import math
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


class AveragingError(ValueError):
  """A PAPA setting (a, k, T or P) is out of range."""


# ---------------------------------------------------------------------------
# Checks, shared by the library and the config validation.


def check_population_size(P: int, *, minimum: int = 1) -> int:
  """P is an integer >= minimum (2 for any averaging method)."""
  if isinstance(P, bool) or not isinstance(P, int) or P < minimum:
    raise AveragingError(
        f'population size P={P!r} must be an integer >= {minimum}; averaging '
        'needs at least two members (set config.population.size).')
  return P


def check_pull(a: float) -> float:
  """The PAPA coefficient a is in [0, 1); a = 1 would never pull."""
  if isinstance(a, bool) or not isinstance(a, (int, float)):
    raise AveragingError(f'PAPA coefficient a={a!r} must be a number in '
                         '[0, 1), e.g. 0.99 (set config.papa.a).')
  if not math.isfinite(a) or not 0.0 <= a < 1.0:
    raise AveragingError(
        f'PAPA coefficient a={a!r} must be in [0, 1): w_j <- a w_j + '
        '(1 - a) mean(w); a=1 never pulls, a<0 overshoots (set '
        'config.papa.a, e.g. 0.99).')
  return float(a)


def check_every(value: int | float, name: str) -> int | float:
  """A period (k in steps, T in epochs) is a finite number > 0."""
  if (isinstance(value, bool) or not isinstance(value, (int, float)) or
      not math.isfinite(value) or value <= 0):
    raise AveragingError(
        f'{name}={value!r} must be a positive number (a period between '
        f'averagings); set config.{name} to e.g. 1.')
  return value


# ---------------------------------------------------------------------------
# Averages.


def population_mean(tree: PyTree) -> PyTree:
  """The uniform average over the population axis; leaves lose that axis."""
  return jax.tree.map(lambda w: jnp.mean(w, axis=0), tree)


def pull(tree: PyTree, a: float | jax.Array,
         scale: float | jax.Array = 1.0) -> PyTree:
  """PAPA's pull of every member towards the population average.

  w_j <- w_j + s (1 - a) (mean(w) - w_j), i.e. a w_j + (1 - a) mean(w) when
  the scale s is 1. With s = lr_t / lr_0 the pull weakens as the learning
  rate decays, as the paper's optional variant does.

  Args:
    tree: leaves of shape (P, ...).
    a: the coefficient kept on the member's own weights, in [0, 1).
    scale: multiplies the pull strength (1 - a).

  Returns:
    A tree of the same shapes.
  """
  strength = (1.0 - a) * scale

  def one(w):
    mean = jnp.mean(w, axis=0, keepdims=True)
    return (w + strength * (mean - w)).astype(w.dtype)

  return jax.tree.map(one, tree)


def replace_with_mean(tree: PyTree) -> PyTree:
  """PAPA-all: every member becomes the population average."""
  return jax.tree.map(
      lambda w: jnp.broadcast_to(jnp.mean(w, axis=0, keepdims=True),
                                 w.shape).astype(w.dtype), tree)


def random_partners(key: jax.Array, P: int) -> jax.Array:
  """A uniformly random pairing of P members into disjoint pairs.

  Draws a uniform permutation and pairs its entries (0, 1), (2, 3), ...; the
  partner of member j is then uniform over the other P - 1 members. With an
  odd P the member left at the end of the permutation is its own partner
  (it stays unchanged this round; each member is left out with chance 1/P).

  Returns:
    partner: (P,) int32 with partner[partner[j]] == j.
  """
  order = jax.random.permutation(key, P)
  paired = P - P % 2
  firsts, seconds = order[0:paired:2], order[1:paired:2]
  partner = jnp.arange(P, dtype=jnp.int32)
  partner = partner.at[firsts].set(seconds.astype(jnp.int32))
  return partner.at[seconds].set(firsts.astype(jnp.int32))


def average_with_partners(tree: PyTree, partner: jax.Array) -> PyTree:
  """PAPA-2's step: w_j <- (w_j + w_partner(j)) / 2 for every member."""
  return jax.tree.map(
      lambda w: ((w + jnp.take(w, partner, axis=0)) / 2).astype(w.dtype),
      tree)


def mean_mixing(P: int) -> jax.Array:
  """PAPA-all as a (P, P) mixing matrix: new member i = sum_j M_ij w_j."""
  return jnp.full((P, P), 1.0 / P)


def partner_mixing(partner: jax.Array) -> jax.Array:
  """PAPA-2's averaging with `partner` as a (P, P) mixing matrix."""
  P = partner.shape[0]
  return (jnp.eye(P) + jax.nn.one_hot(partner, P)) / 2


def average_random_pairs(tree: PyTree, key: jax.Array) -> PyTree:
  """PAPA-2 with a fresh random pairing drawn from `key`."""
  P = jax.tree.leaves(tree)[0].shape[0]
  return average_with_partners(tree, random_partners(key, P))


# ---------------------------------------------------------------------------
# Groups: several independent populations side by side (one per seed).


def in_groups(fn, tree: PyTree, group_size: int, *args) -> PyTree:
  """Applies `fn(tree, *args)` within consecutive groups of members.

  The leading axis (G * group_size) is split into G groups, `fn` is vmapped
  over them, and the result is flattened back; `args` (keys, say) carry a
  leading G axis too. Lets seeds x P members train as one program while each
  seed's population averages only with itself.
  """
  leaves = jax.tree.leaves(tree)
  total = leaves[0].shape[0]
  if total % group_size:
    raise AveragingError(f'{total} members do not split into groups of '
                         f'{group_size}.')
  G = total // group_size
  grouped = jax.tree.map(
      lambda w: w.reshape((G, group_size) + w.shape[1:]), tree)
  out = jax.vmap(fn)(grouped, *args)
  return jax.tree.map(lambda w: w.reshape((total,) + w.shape[2:]), out)
