"""The restricted secant inequality and error bound of a gradient.

With w the weights at a step, w* a reference point and g a gradient (all
pytrees of the same structure), write d = w - w*. Then

    RSI   = <g, d> / ||d||^2
    EB    = ||g|| / ||d||
    gamma = RSI / EB = <g, d> / (||g|| ||d||)   (the cosine between g and d)
    eta*  = RSI / EB^2 = <g, d> / ||g||^2

For the plain step w+ = w - eta g,

    ||w+ - w*||^2 = ||d||^2 (1 - 2 eta RSI + eta^2 EB^2),

which is smallest at eta = eta*. Following Guille-Escuret, Naganuma, Fatras
and Mitliagkas, "No Wrong Turns: The Simple Geometry Of Neural Networks
Optimization Paths" (ICML 2024), a path has a simple geometry when gamma stays
positive and bounded away from zero.

Everything is stored as the three raw pieces (<g, d>, ||g||, ||d||), so any
ratio can be recomputed later; `Geometry` derives the ratios from them.
"""

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp

PyTree = Any


# ---------------------------------------------------------------------------
# Pytree algebra. Written by hand because optax exposes only global_norm; the
# dot product must accumulate across leaves in float32 like the norm does.


def tree_dot(a: PyTree, b: PyTree) -> jax.Array:
  """<a, b> summed over all leaves; a scalar."""
  leaves = jax.tree.leaves(jax.tree.map(
      lambda x, y: jnp.vdot(x.ravel(), y.ravel()), a, b))
  return sum(leaves, jnp.zeros((), jnp.result_type(*leaves)))


def tree_norm(a: PyTree) -> jax.Array:
  """The Euclidean norm of all leaves together; a scalar."""
  return jnp.sqrt(tree_dot(a, a))


def tree_sub(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(jnp.subtract, a, b)


def tree_size(a: PyTree) -> int:
  """The number of scalars in a pytree (the dimension of weight space)."""
  return sum(int(x.size) for x in jax.tree.leaves(a))


def check_like(w: PyTree, w_ref: PyTree, name: str = 'w*') -> None:
  """Raises ValueError unless w_ref has the structure and shapes of w.

  Args:
    w: the weights (a pytree of arrays).
    w_ref: a reference point or direction meant to live in the same space.
    name: how the error names w_ref.
  """
  w_structure, ref_structure = jax.tree.structure(w), jax.tree.structure(w_ref)
  if w_structure != ref_structure:
    raise ValueError(
        f'The reference {name} has pytree structure {ref_structure}, but the '
        f'weights have {w_structure}; take {name} from a run of the same '
        'model.')
  for path_w, leaf_w in jax.tree_util.tree_leaves_with_path(w):
    leaf_ref = _leaf_at(w_ref, path_w)
    if jnp.shape(leaf_w) != jnp.shape(leaf_ref):
      raise ValueError(
          f'The reference {name} has shape {jnp.shape(leaf_ref)} at '
          f'{jax.tree_util.keystr(path_w)}, but the weights have '
          f'{jnp.shape(leaf_w)}; take {name} from a run of the same model '
          '(same widths, and without a population axis unless the probe is '
          'given axis_name).')


def _leaf_at(tree: PyTree, path) -> Any:
  for entry in path:
    if isinstance(entry, jax.tree_util.DictKey):
      tree = tree[entry.key]
    elif isinstance(entry, jax.tree_util.SequenceKey):
      tree = tree[entry.idx]
    else:
      tree = getattr(tree, entry.name)
  return tree


# ---------------------------------------------------------------------------
# The measurements.


class Geometry(flax.struct.PyTreeNode):
  """The raw pieces of one measurement and the ratios derived from them.

  Any leading axes (steps, seeds, probe batches) broadcast through.

  Attributes:
    inner: <g, d>, with d = w - w*.
    grad_norm: ||g||.
    dist: ||d||.
  """
  inner: jax.Array
  grad_norm: jax.Array
  dist: jax.Array

  @property
  def rsi(self) -> jax.Array:
    return self.inner / self.dist ** 2

  @property
  def eb(self) -> jax.Array:
    return self.grad_norm / self.dist

  @property
  def gamma(self) -> jax.Array:
    """RSI / EB: the cosine between g and w - w*, in [-1, 1]."""
    return self.inner / (self.grad_norm * self.dist)

  @property
  def eta_star(self) -> jax.Array:
    """RSI / EB^2: the step along -g that brings w closest to w*."""
    return self.inner / self.grad_norm ** 2

  def contraction(self, eta) -> jax.Array:
    """||w - eta g - w*||^2 / ||w - w*||^2 = 1 - 2 eta RSI + eta^2 EB^2."""
    return 1.0 - 2.0 * eta * self.rsi + eta ** 2 * self.eb ** 2

  def ratios(self) -> dict[str, jax.Array]:
    return dict(rsi=self.rsi, eb=self.eb, gamma=self.gamma,
                eta_star=self.eta_star)


def along(g: PyTree, d: PyTree) -> Geometry:
  """The pieces of gradient g against a displacement d = w - w*."""
  return Geometry(inner=tree_dot(g, d), grad_norm=tree_norm(g),
                  dist=tree_norm(d))


def measure(g: PyTree, w: PyTree, w_star: PyTree) -> Geometry:
  """RSI, EB, gamma and eta* of gradient g at w against the point w_star.

  Args:
    g: the gradient, a pytree like w.
    w: the weights.
    w_star: the reference point, a pytree like w.

  Returns:
    A `Geometry` with scalar pieces.
  """
  check_like(w, g, 'g')
  check_like(w, w_star, 'w*')
  return along(g, tree_sub(w, w_star))


# ---------------------------------------------------------------------------
# Reference points and directions.


@dataclasses.dataclass(frozen=True)
class Reference:
  """What w - w* is measured against at every step.

  Attributes:
    value: a pytree like the weights. With `kind='point'` it is w* and the
      displacement is w - w*; with `kind='direction'` it is itself the
      displacement, whatever w is (the random-direction control).
    kind: 'point' or 'direction'.
  """
  value: PyTree
  kind: str = 'point'

  def __post_init__(self):
    if self.kind not in ('point', 'direction'):
      raise ValueError(f"Reference kind={self.kind!r} must be 'point' or "
                       "'direction'.")

  def displacement(self, w: PyTree) -> PyTree:
    if self.kind == 'direction':
      return self.value
    return tree_sub(w, self.value)

  def member(self, index) -> 'Reference':
    """The reference of one population member (leading axis of `value`)."""
    return Reference(jax.tree.map(lambda x: x[index], self.value), self.kind)


def random_direction(key: jax.Array, like: PyTree,
                     norm: jax.Array | float = 1.0) -> PyTree:
  """A Gaussian direction with the structure of `like`, scaled to `norm`.

  Its cosine with any fixed vector is about N(0, 1 / D) for D =
  tree_size(like): the gamma a structureless reference gives.
  """
  leaves, treedef = jax.tree.flatten(like)
  keys = jax.random.split(key, len(leaves))
  draws = [jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
           for k, x in zip(keys, leaves)]
  direction = jax.tree.unflatten(treedef, draws)
  scale = norm / tree_norm(direction)
  return jax.tree.map(lambda x: x * scale, direction)
