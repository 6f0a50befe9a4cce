"""Probes that measure RSI and EB inside the shared training step.

A probe is a function of a `common.loop.StepView` returning a dict of scalars
(or small arrays); `common.loop.gradient_step(..., probes=[...])` evaluates
it inside the jitted step, and `common.loop.train(..., keep_step_metrics=
probe.names)` keeps its values for every step. The probes only read the step:
they never change the trajectory they observe (tests check this bit for bit).

Every probe stores raw pieces, never ratios, under these names:

    geo/dist/<ref>                 ||w - w*||
    geo/mb/grad_norm               ||g|| of the minibatch gradient g
    geo/mb/inner/<ref>             <g, w - w*>
    geo/disp/grad_norm             ||w - w+|| of the optimizer's displacement
    geo/disp/inner/<ref>           <w - w+, w - w*>
    geo/<set>/grad_norm            (B,) one per fixed batch, NaN off-schedule
    geo/<set>/inner/<ref>          (B,)
    geo/<set>/mean/grad_norm       the gradient averaged over the B batches
    geo/<set>/mean/inner/<ref>

`geometry.quantities.Geometry(inner, grad_norm, dist)` turns them into RSI,
EB, gamma and eta*. The displacement is measured as the "gradient" -(w+ - w),
so for plain SGD it is eta times the minibatch gradient, and the contraction
identity holds for it with eta = 1 under any optimizer.

In a population vmapped with `jax.vmap(..., axis_name=A)`, pass
`axis_name=A` (or `member_of`, a function of the view giving the member's
index): each reference then carries a leading population axis and each
member is measured against its own slice.
"""

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from common import loop
from geometry import quantities

PREFIX = 'geo'


def _references(references: Mapping[str, quantities.Reference]) -> dict:
  if not references:
    raise ValueError('A geometry probe needs at least one reference (a w* or '
                     'a direction); got none.')
  out = {}
  for name, ref in references.items():
    if not isinstance(ref, quantities.Reference):
      ref = quantities.Reference(ref)
    out[name] = ref
  return out


def _member_references(probe, view: loop.StepView) -> dict:
  """This member's references, checked against the weights' shapes."""
  references = probe.references
  if probe.axis_name is not None and probe.member_of is not None:
    raise ValueError('Give a probe axis_name or member_of, not both.')
  index = None
  if probe.axis_name is not None:
    index = jax.lax.axis_index(probe.axis_name)
  elif probe.member_of is not None:
    index = probe.member_of(view)
  if index is not None:
    references = {k: r.member(index) for k, r in references.items()}
  params = view.params
  for name, ref in references.items():
    quantities.check_like(params, ref.value, f'w* {name!r}')
  return references


@dataclasses.dataclass(frozen=True)
class StepProbe:
  """The minibatch gradient and the optimizer's displacement at every step.

  Attributes:
    references: name -> `quantities.Reference` (or a bare w* pytree).
    axis_name: the population's vmap axis name, if any.
    member_of: instead of axis_name, `view -> member index` (for a
      population vmapped without an axis name, e.g. from a batch field).
    minibatch: measure the gradient the update used.
    displacement: measure the optimizer's actual displacement.
  """
  references: Mapping[str, Any]
  axis_name: str | None = None
  member_of: Callable | None = None
  minibatch: bool = True
  displacement: bool = True

  def __post_init__(self):
    object.__setattr__(self, 'references', _references(self.references))

  @property
  def names(self) -> tuple[str, ...]:
    names = [f'{PREFIX}/dist/{r}' for r in self.references]
    for kind, on in (('mb', self.minibatch), ('disp', self.displacement)):
      if on:
        names.append(f'{PREFIX}/{kind}/grad_norm')
        names += [f'{PREFIX}/{kind}/inner/{r}' for r in self.references]
    return tuple(names)

  def __call__(self, view: loop.StepView) -> dict[str, jax.Array]:
    references = _member_references(self, view)
    d = {k: r.displacement(view.params) for k, r in references.items()}
    out = {f'{PREFIX}/dist/{k}': quantities.tree_norm(v)
           for k, v in d.items()}

    # The displacement as a gradient: w - w+ (= eta g for plain SGD).
    step_back = jax.tree.map(jnp.negative, view.updates)
    for kind, g, on in (('mb', view.grads, self.minibatch),
                        ('disp', step_back, self.displacement)):
      if on:
        out[f'{PREFIX}/{kind}/grad_norm'] = quantities.tree_norm(g)
        out.update({f'{PREFIX}/{kind}/inner/{k}': quantities.tree_dot(g, v)
                    for k, v in d.items()})
    return out


@dataclasses.dataclass(frozen=True)
class BatchSetProbe:
  """Gradients on a fixed set of batches, every `every` steps.

  With the whole training set as a single batch and `every` = steps per
  epoch, this is the full-batch gradient once an epoch.

  Attributes:
    references: name -> `quantities.Reference` (or a bare w* pytree).
    batches: a batch pytree with a leading axis of B >= 1 batches.
    every: measure at steps that are multiples of this (step 0 included);
      other steps report NaN.
    name: the metric group, 'probe' or 'full' for example.
    key_seed: the loss's key for batch b is fold_in(PRNGKey(key_seed), b) at
      every step, so the measured objective does not move between steps.
    axis_name: the population's vmap axis name, if any.
    member_of: instead of axis_name, `view -> member index`.
  """
  references: Mapping[str, Any]
  batches: Any
  every: int
  name: str = 'probe'
  key_seed: int = 0
  axis_name: str | None = None
  member_of: Callable | None = None

  def __post_init__(self):
    object.__setattr__(self, 'references', _references(self.references))
    leaves = jax.tree.leaves(self.batches)
    sizes = {int(jnp.shape(x)[0]) if jnp.ndim(x) else -1 for x in leaves}
    if not leaves or sizes == {0}:
      raise ValueError(f'The probe set {self.name!r} is empty: pass batches '
                       'stacked along a leading axis of at least one batch.')
    if len(sizes) != 1 or -1 in sizes:
      raise ValueError(f'The batches of probe set {self.name!r} must share '
                       f'one leading (batch-count) axis; got sizes {sizes}.')
    if self.every < 1:
      raise ValueError(f'every={self.every} for probe set {self.name!r} must '
                       'be >= 1 (steps between measurements).')

  @property
  def num_batches(self) -> int:
    return int(jnp.shape(jax.tree.leaves(self.batches)[0])[0])

  @property
  def names(self) -> tuple[str, ...]:
    base = f'{PREFIX}/{self.name}'
    names = [f'{PREFIX}/dist/{r}' for r in self.references]
    for group in (base, f'{base}/mean'):
      names.append(f'{group}/grad_norm')
      names += [f'{group}/inner/{r}' for r in self.references]
    return tuple(names)

  def __call__(self, view: loop.StepView) -> dict[str, jax.Array]:
    references = _member_references(self, view)
    d = {k: r.displacement(view.params) for k, r in references.items()}
    num = self.num_batches

    def loss_only(params, batch, key):
      loss, _ = view.loss_fn(params, view.model_state, batch, key)
      return loss

    # One gradient per batch; their sum is carried to form the mean.
    def one_batch(total, inputs):
      batch, index = inputs
      key = jax.random.fold_in(jax.random.PRNGKey(self.key_seed), index)
      g = jax.grad(loss_only)(view.params, batch, key)
      pieces = (quantities.tree_norm(g),
                {k: quantities.tree_dot(g, v) for k, v in d.items()})
      return jax.tree.map(jnp.add, total, g), pieces

    def measure(_):
      zero = jax.tree.map(jnp.zeros_like, view.params)
      total, (norms, inners) = jax.lax.scan(
          one_batch, zero, (self.batches, jnp.arange(num)))
      mean = jax.tree.map(lambda x: x / num, total)
      return (norms, inners, quantities.tree_norm(mean),
              {k: quantities.tree_dot(mean, v) for k, v in d.items()})

    def skip(_):
      dtype = jnp.result_type(*jax.tree.leaves(view.params))
      nan = jnp.full((num,), jnp.nan, dtype)
      return (nan, {k: nan for k in d}, nan[0], {k: nan[0] for k in d})

    norms, inners, mean_norm, mean_inners = jax.lax.cond(
        view.step % self.every == 0, measure, skip, None)

    base = f'{PREFIX}/{self.name}'
    out = {f'{PREFIX}/dist/{k}': quantities.tree_norm(v)
           for k, v in d.items()}
    out[f'{base}/grad_norm'] = norms
    out[f'{base}/mean/grad_norm'] = mean_norm
    for k in d:
      out[f'{base}/inner/{k}'] = inners[k]
      out[f'{base}/mean/inner/{k}'] = mean_inners[k]
    return out


def metric_names(probes) -> tuple[str, ...]:
  """The names to pass to `train(keep_step_metrics=...)` for these probes."""
  if not probes:
    raise ValueError('metric_names got an empty list of probes.')
  names = []
  for probe in probes:
    names += [n for n in probe.names if n not in names]
  return tuple(names)


def geometry_of(step_metrics: Mapping[str, Any], kind: str,
                reference: str) -> quantities.Geometry:
  """The `Geometry` of one measurement kind against one reference.

  Args:
    step_metrics: `TrainResult.step_metrics` (or rows read back from
      steps.jsonl stacked into arrays).
    kind: 'mb', 'disp', or the name of a batch set ('probe', 'full',
      'probe/mean', ...).
    reference: a reference name given to the probe.

  Returns:
    A `Geometry` whose pieces have the shape of the stored values, (steps,
    ...); the distance broadcasts over a trailing batch-set axis.
  """
  key_inner = f'{PREFIX}/{kind}/inner/{reference}'
  key_dist = f'{PREFIX}/dist/{reference}'
  for key in (key_inner, key_dist):
    if key not in step_metrics:
      known = sorted(k for k in step_metrics if k.startswith(PREFIX))
      raise KeyError(f'{key!r} was not recorded; recorded: {known}. Attach '
                     'the probe and keep its metric_names.')
  inner = jnp.asarray(step_metrics[key_inner])
  dist = jnp.asarray(step_metrics[key_dist])
  dist = dist.reshape(dist.shape + (1,) * (inner.ndim - dist.ndim))
  return quantities.Geometry(
      inner=inner, grad_norm=jnp.asarray(
          step_metrics[f'{PREFIX}/{kind}/grad_norm']), dist=dist)
