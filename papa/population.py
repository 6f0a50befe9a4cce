"""A population of models trained as one jitted, vmapped program.

The single-member step (one gradient update on the member's own batch, with
its own regularisers and random key) is vmapped over a leading population
axis of N = G x P members: G independent populations of P members each,
averaged only within their own group. Each group has its own `Method`, so
several seeds and several methods (independent, PAPA, PAPA-all, PAPA-2) can
train side by side as one program, compiled once. After the update the step
applies every group's averaging when it is due (`lax.cond` skips the steps
where none is), then REPAIR (`papa.repair`) for the PAPA-all / PAPA-2 groups
that ask for it, so the whole run is `common.loop.train` over this one step.

With a `Mesh`, every leaf with the population axis is placed with
`NamedSharding(mesh, P('population'))`, so members spread over devices and
the averages become all-reduces; the same code runs unsharded on one device.

Diversity per member, all derived from its integer seed: initialisation
(fold_in(PRNGKey(seed), 0)), data order (fold_in(PRNGKey(seed), 1)), the
per-step key (fold_in(step_key, seed)) and the regulariser combination. Two
members with the same seed are therefore identical copies.
"""

import dataclasses
import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import data as data_lib
from common import loop
from papa import averaging
from papa import repair as repair_lib
from papa import regularisers

AXIS = 'population'
METHODS = ('independent', 'papa', 'papa_all', 'papa_2')


@dataclasses.dataclass(frozen=True)
class Method:
  """An averaging schedule.

  Attributes:
    name: 'independent', 'papa' (pull every k steps), 'papa_all' (replace by
      the average) or 'papa_2' (average random pairs) every `every` steps.
      PAPA-2 with an odd P pairs P - 1 members; the one left out (a
      different, uniformly drawn member each time) stays as it is that
      round, so over many rounds every member averages equally often.
    every: period in steps (k for PAPA; T epochs x steps per epoch for the
      others). Ignored by 'independent'.
    first: the step count after which the first averaging happens, then
      every `every` steps; 0 means `every`. The paper's PAPA-all and PAPA-2
      average first at the end of epoch 1, so that members from different
      initialisations meet before they settle into different basins.
    a: PAPA's coefficient on the member's own weights, in [0, 1).
    lr_scaled: scale PAPA's pull (1 - a) by lr_t / lr_0.
    repair: after each PAPA-all or PAPA-2 averaging, restore the hidden
      units' statistics with REPAIR (`papa.repair`), as the paper does.
  """
  name: str = 'independent'
  every: int = 1
  first: int = 0
  a: float = 0.99
  lr_scaled: bool = False
  repair: bool = False

  def __post_init__(self):
    if self.name not in METHODS:
      raise averaging.AveragingError(
          f'Unknown method {self.name!r}; choose one of {list(METHODS)}.')
    if self.name != 'independent':
      label = 'papa.every (k)' if self.name == 'papa' else 'papa.every (T)'
      averaging.check_every(self.every, label)
      if not isinstance(self.every, (int, np.integer)):
        raise averaging.AveragingError(
            f'{label}={self.every!r} must be a whole number of steps.')
      if (isinstance(self.first, bool) or
          not isinstance(self.first, (int, np.integer)) or self.first < 0):
        raise averaging.AveragingError(
            f'first={self.first!r} (the step of the first averaging) must '
            'be a whole number >= 0.')
    if self.name == 'papa':
      averaging.check_pull(self.a)
    if self.repair and self.name not in ('papa_all', 'papa_2'):
      raise averaging.AveragingError(
          f'repair applies to PAPA-all and PAPA-2 averagings, not to '
          f'{self.name!r} (whose members stay close to their mean).')

  @property
  def start(self) -> int:
    return self.first or self.every


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D mesh named 'population' over the first num_devices (0: all)."""
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise ValueError(f'num_devices={num_devices} must be in [0, '
                     f'{len(devices)}] on this machine.')
  return jax.sharding.Mesh(np.asarray(devices[:num_devices or None]),
                           (AXIS,))


class Population:
  """Builds the state, batches and step of a population.

  Args:
    model: a flax classifier `model.apply(vars, x, train=)`.
    train: the training split, kept on the device whole.
    num_classes: number of classes.
    member_seeds: N integer seeds, one per member, in group order.
    group_size: P, the members that average together (N % P == 0).
    optimizer: the optax transformation of every member.
    learning_rate_fn: the schedule (for the lr-scaled PAPA pull).
    batch_size: examples per member per step.
    hyper: {regulariser name: (N,) values}; see papa.regularisers.
    methods: the averaging schedule of each of the G = N / P groups, or one
      schedule for all of them.
    mesh: shard the population axis over this mesh; None for one device.
    probes: `common.loop` probes run inside every member's gradient step
      (they observe only; the averaging is outside what they see). Their
      scalars come back per member, with the population axis.
    repair_size: training examples (the first ones) on which REPAIR
      measures unit statistics, for methods with `repair`.
  """

  def __init__(self, model: nn.Module, train: data_lib.Split,
               num_classes: int, *, member_seeds: Sequence[int],
               group_size: int, optimizer: optax.GradientTransformation,
               learning_rate_fn: Callable, batch_size: int,
               hyper: dict, methods: Method | Sequence[Method] = Method(),
               mesh: jax.sharding.Mesh | None = None,
               probes: Sequence[loop.Probe] = (), repair_size: int = 512):
    self.model, self.num_classes = model, num_classes
    self.probes = tuple(probes)
    self.member_seeds = np.asarray(member_seeds, np.int32)
    self.N, self.P = len(self.member_seeds), group_size
    if isinstance(methods, Method):
      methods = (methods,) * max(1, self.N // max(group_size, 1))
    self.methods = tuple(methods)
    self.averages = any(m.name != 'independent' for m in self.methods)
    self.repairs = any(m.repair for m in self.methods)
    averaging.check_population_size(self.P,
                                    minimum=2 if self.averages else 1)
    if self.N != self.P * len(self.methods):
      raise averaging.AveragingError(
          f'{self.N} member seeds do not split into {len(self.methods)} '
          f'populations of P={self.P}.')
    if mesh is not None and self.N % mesh.size:
      raise ValueError(
          f'A population of {self.N} members cannot be split evenly over '
          f'{mesh.size} devices; make the number of members (seeds x P) a '
          f'multiple of {mesh.size} or set config.population.num_devices to '
          f'a divisor of {self.N}.')
    self.optimizer, self.learning_rate_fn = optimizer, learning_rate_fn
    self.batch_size, self.mesh = batch_size, mesh
    self.hyper = {k: jnp.asarray(v, jnp.float32)
                  for k, v in regularisers.prepare(hyper).items()}
    self.train_x = jnp.asarray(train.x)
    self.train_y = jnp.asarray(train.y)
    if isinstance(repair_size, bool) or repair_size < 1:
      raise ValueError(f'repair_size={repair_size!r} must be a positive '
                       'number of examples.')
    self.repair_x = self.train_x[:repair_size]
    data_lib.batch_indices(jax.random.PRNGKey(0), 0, len(train),
                           batch_size)  # Raises if the batch is too big.

  # -- Members' keys -------------------------------------------------------

  @staticmethod
  def member_key(seed, purpose: int) -> jax.Array:
    """purpose 0: initialisation, 1: data order."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), purpose)

  # -- One member ------------------------------------------------------------

  def init_member(self, seed) -> loop.TrainState:
    """The train state of the member with this seed."""
    variables = self.model.init(self.member_key(seed, 0),
                                self.train_x[:1], train=False)
    variables = dict(variables)
    params = variables.pop('params')
    return loop.TrainState.create(params, self.optimizer,
                                  model_state=variables)

  def loss_fn(self, params, model_state, batch, key):
    """Cross-entropy on the member's regularised batch."""
    x, targets = regularisers.apply(key, batch['x'], batch['y'],
                                    batch['hyper'], self.num_classes)
    variables = {'params': params, **model_state}
    logits, updates = self.model.apply(variables, x, train=True,
                                       mutable=list(model_state))
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['y'])
    return loss, (dict(updates), {'train_accuracy': accuracy})

  def member_step(self, state, batch, key):
    """One gradient step of one member (key already the member's)."""
    step = loop.gradient_step(self.loss_fn, self.optimizer,
                              probes=self.probes)
    return step(state, batch, key)

  def member_batch(self, seed, hyper, step) -> dict:
    idx = data_lib.batch_indices(self.member_key(seed, 1), step,
                                 self.train_x.shape[0], self.batch_size)
    return {'x': self.train_x[idx], 'y': self.train_y[idx], 'hyper': hyper}

  def single_run(self, index: int):
    """(state, step_fn, batch_fn) that train member `index` alone with
    `common.loop.train`; the reference a population must reproduce."""
    seed = int(self.member_seeds[index])
    hyper = {k: v[index] for k, v in self.hyper.items()}
    step_fn = lambda s, b, key: self.member_step(
        s, b, jax.random.fold_in(key, seed))
    return (self.init_member(seed), step_fn,
            functools.partial(self.member_batch, seed, hyper))

  # -- The population --------------------------------------------------------

  def _shard(self, tree):
    if self.mesh is None:
      return tree
    spec = jax.sharding.NamedSharding(self.mesh,
                                      jax.sharding.PartitionSpec(AXIS))
    return jax.device_put(tree, spec)

  def _constrain(self, tree):
    if self.mesh is None:
      return tree
    spec = jax.sharding.NamedSharding(self.mesh,
                                      jax.sharding.PartitionSpec(AXIS))
    return jax.lax.with_sharding_constraint(tree, spec)

  def init(self) -> loop.TrainState:
    """Stacked member states, leaves (N, ...), `step` a scalar."""
    # Runs once, so compile it fast rather than well: the random
    # initialisers' kernels otherwise take seconds to optimise on CPU.
    init = jax.jit(jax.vmap(self.init_member),
                   compiler_options={'xla_backend_optimization_level': 0})
    states = init(self.member_seeds)
    return states.replace(step=jnp.zeros((), jnp.int32),
                          params=self._shard(states.params),
                          opt_state=self._shard(states.opt_state),
                          model_state=self._shard(states.model_state))

  def batch_fn(self, step) -> dict:
    """Every member's batch at `step`: x (N, B, ...), y (N, B)."""
    batch = jax.vmap(self.member_batch, in_axes=(0, 0, None))(
        self.member_seeds, self.hyper, step)
    return self._constrain(batch)

  def _due(self, count):
    """(G,) whether each group averages once `count` steps are done."""
    start = jnp.asarray([m.start for m in self.methods])
    every = jnp.asarray([m.every for m in self.methods])
    averages = jnp.asarray([m.name != 'independent' for m in self.methods])
    return averages & (count >= start) & ((count - start) % every == 0)

  def average(self, params, model_state, step, key):
    """Each group's averaging where it is due after the update of `step`.

    Under vmap over groups `lax.switch` evaluates every branch and selects;
    the averages are cheap next to the gradient step, and the caller skips
    the whole call on steps where no group is due.
    """
    ids = jnp.asarray([METHODS.index(m.name) for m in self.methods])
    a = jnp.asarray([m.a for m in self.methods], jnp.float32)
    scale = jnp.where(jnp.asarray([m.lr_scaled for m in self.methods]),
                      self.learning_rate_fn(step) / self.learning_rate_fn(0),
                      1.0)
    branch = jnp.where(self._due(step + 1), ids, 0)
    keys = jax.random.split(key, len(self.methods))

    def one_group(tree, branch, a, scale, key):
      return jax.lax.switch(branch, (
          lambda t: t,
          lambda t: averaging.pull(t, a, scale),
          averaging.replace_with_mean,
          lambda t: averaging.average_random_pairs(t, key)), tree)

    return averaging.in_groups(one_group, (params, model_state), self.P,
                               branch, a, scale, keys)

  @property
  def _repairing_groups(self) -> list[int]:
    """Indices of the groups whose method asks for REPAIR (static)."""
    return [g for g, m in enumerate(self.methods) if m.repair]

  def _repairs_due(self, step):
    """(G,) which groups repair after the update of `step`."""
    repairs = jnp.asarray([m.repair for m in self.methods])
    return self._due(step + 1) & repairs

  def _mixing(self, method: Method, key):
    """(P, P) the averaging of a PAPA-all / PAPA-2 group as a mixing
    matrix; PAPA-2's pairing comes from the group's key in `average`."""
    if method.name == 'papa_2':
      return averaging.partner_mixing(averaging.random_partners(key, self.P))
    return averaging.mean_mixing(self.P)

  def repair(self, before, after, step, key):
    """REPAIR of the groups whose PAPA-all / PAPA-2 averaging just ran.

    Only the groups that ask for REPAIR are computed (a static subset);
    among them, those not due this step keep their weights.

    Args:
      before, after: (params, model_state) before and after the averaging,
        leaves (N, ...).
    Returns:
      params, with the repaired groups' hidden units rescaled.
    """
    groups = self._repairing_groups
    index = jnp.asarray(groups)
    keys = jax.random.split(key, len(self.methods))
    mixing = jnp.stack([self._mixing(self.methods[g], keys[g])
                        for g in groups])
    due = self._repairs_due(step)[index]
    grouped = lambda tree: jax.tree.map(
        lambda w: w.reshape((len(self.methods), self.P) + w.shape[1:]), tree)
    chosen = lambda tree: jax.tree.map(lambda w: w[index], grouped(tree))
    one_group = functools.partial(repair_lib.repair_population, self.model,
                                  x=self.repair_x)
    repaired = jax.vmap(one_group)(*chosen(before), *chosen(after), mixing)

    def put_back(w, new):
      new = jnp.where(due.reshape((-1,) + (1,) * (new.ndim - 1)), new,
                      w[index])
      return w.at[index].set(new)

    params = jax.tree.map(put_back, grouped(after[0]), repaired)
    return jax.tree.map(lambda w: w.reshape((self.N,) + w.shape[2:]), params)

  def step_fn(self, state: loop.TrainState, batch, key):
    """The population step: vmapped member steps, then the averaging."""
    keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(self.member_seeds)
    member_state = state.replace(step=jnp.broadcast_to(state.step, (self.N,)))
    new, metrics = jax.vmap(self.member_step)(member_state, batch, keys)
    new = new.replace(step=state.step + 1)
    if not self.averages:
      return new, metrics

    # Averaging after the update, in the groups whose period has come.
    due = jnp.any(self._due(new.step))
    averaging_key = jax.random.fold_in(key, 2**31 - 1)
    params, model_state = jax.lax.cond(
        due, lambda: self.average(new.params, new.model_state, state.step,
                                  averaging_key),
        lambda: (new.params, new.model_state))
    if self.repairs:
      params = jax.lax.cond(
          jnp.any(self._repairs_due(state.step)), lambda: self.repair(
              (new.params, new.model_state), (params, model_state),
              state.step, averaging_key),
          lambda: params)
    return new.replace(params=self._constrain(params),
                       model_state=self._constrain(model_state)), metrics
