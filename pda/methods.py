"""PDA methods: networks, loss terms, periodic re-weighting, grids.

Every method trains a feature extractor G (MLP or CNN, then a bottleneck),
a classifier F and, for adversarial methods, a domain discriminator D, with
the loss terms of its paper as the benchmark (Salvador et al., 2023) ran
them:

* source_only: cross-entropy on the source.
* pada (Cao et al., 2018): class weights = mean target prediction (divided
  by its max), refreshed every `interval` steps; class-weighted CE and a
  class-weighted adversarial loss through a gradient reversal layer.
* safn (Xu et al., 2019): CE + lambda * stepwise feature-norm enlargement
  (||g|| pushed to ||g||.detach() + delta_r) on source and target.
* ba3us (Liang et al., 2020): class-weighted CE + entropy-conditioned
  weighted adversarial alignment with source samples mixed into the target
  side (a share decaying over training) + ent_weight * target entropy +
  cot_weight * weighted complement-entropy on the source.
* ar (Gu et al., 2021): source weights w from a Wasserstein critic and the
  convex problem min_w <w, d_s> s.t. w >= 0, sum w = n, ||w - 1||^2 <= rho n
  (rho adjusted until the reweighted distance lies in (low, up]); source
  batches drawn with probability w; + ent_weight * target entropy under a
  frozen classifier after 5% of training.
* jumbot (Fatras et al., 2021): CE + eta_3 <pi, M>, pi the entropic
  unbalanced plan (class-balanced source batches).
* mpot (Nguyen et al., 2022): CE + eta_3 <pi, M>, pi the entropic partial
  plan of mass m, ramped from 0.01 over the first half of training.

Hyper-parameters are arrays inside the jitted step (a population of grid
points and seeds is one vmapped program), except the `static` ones, which
shape the program (ott-jax's unbalanced solver needs a concrete tau).

Differences from the benchmark, by design: networks are small and trained
from scratch on embedded data (the benchmark fine-tunes an ImageNet
ResNet-50), the AR critic trains for `critic_steps` steps, and SAFN's source
term uses delta_r as in the SAFN paper (the benchmark passes lambda there).
"""

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import data as common_data
from pda import ar
from pda import networks
from pda import ot_losses


# ---------------------------------------------------------------------------
# Networks.

FeatureNet = networks.FeatureNet
Discriminator = networks.Discriminator


@dataclasses.dataclass(frozen=True)
class Spec:
  """What shapes a run: network, schedule and batch sizes.

  Attributes:
    num_classes: K.
    num_steps: training steps.
    batch_size: source and target minibatch size.
    interval: steps between checkpoints and between weight refreshes.
    learning_rate: SGD base rate of the inverse-decay schedule.
    widths: hidden widths of G's MLP.
    bottleneck_dim: feature dimension d.
    conv: use a small CNN before the MLP (images, signals).
    critic_steps: AR critic training steps per refresh.
  """
  num_classes: int
  num_steps: int = 600
  batch_size: int = 40
  interval: int = 100
  learning_rate: float = 0.02
  widths: tuple = (128,)
  bottleneck_dim: int = 32
  conv: bool = False
  critic_steps: int = 200

  @property
  def feature_net(self) -> FeatureNet:
    return FeatureNet(tuple(self.widths), self.bottleneck_dim, self.conv)


def init_params(spec: Spec, key: jax.Array, example_shape: tuple) -> dict:
  k_g, k_f, k_d = jax.random.split(key, 3)
  x = jnp.zeros((1, *example_shape))
  g = jnp.zeros((1, spec.bottleneck_dim))
  return {'g': spec.feature_net.init(k_g, x),
          'f': nn.Dense(spec.num_classes).init(k_f, g),
          'disc': Discriminator().init(k_d, g)}


def features(spec: Spec, params, x) -> jax.Array:
  return spec.feature_net.apply(params['g'], x)


def classify(spec: Spec, params, g) -> jax.Array:
  return nn.Dense(spec.num_classes).apply(params['f'], g)


def optimizer(spec: Spec) -> optax.GradientTransformation:
  """The benchmark's SGD: Nesterov momentum 0.9, weight decay 5e-4 and
  lr (1 + 0.001 i)^-0.75."""
  schedule = lambda i: spec.learning_rate * (1.0 + 0.001 * i) ** -0.75
  return optax.chain(optax.add_decayed_weights(5e-4),
                     optax.sgd(schedule, momentum=0.9, nesterov=True))


# ---------------------------------------------------------------------------
# Shared loss pieces.


@jax.custom_vjp
def grad_reverse(x, coeff):
  return x


def _grad_reverse_fwd(x, coeff):
  return x, coeff


def _grad_reverse_bwd(coeff, g):
  return -coeff * g, jnp.zeros_like(coeff)


grad_reverse.defvjp(_grad_reverse_fwd, _grad_reverse_bwd)


def grl_coeff(step, num_steps: int, alpha: float = 10.0) -> jax.Array:
  """The DANN ramp 2 / (1 + exp(-alpha p)) - 1, p = step / num_steps."""
  return 2.0 / (1.0 + jnp.exp(-alpha * step / num_steps)) - 1.0


def cross_entropy(logits, y) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def entropy(logits) -> jax.Array:
  """Per-example prediction entropy, (n,)."""
  p = jax.nn.softmax(logits)
  return -jnp.sum(p * jax.nn.log_softmax(logits), axis=-1)


def weighted_mean(values, weights) -> jax.Array:
  weights = jax.lax.stop_gradient(weights)
  return jnp.sum(weights * values) / (jnp.sum(weights) + 1e-8)


def bce_with_logits(logits, labels) -> jax.Array:
  return optax.sigmoid_binary_cross_entropy(logits, labels)


def complement_entropy(logits, y, num_classes: int, weights) -> jax.Array:
  """BA3US's weighted complement-entropy (margin) loss on the source."""
  p = jax.nn.softmax(logits)
  p_y = jnp.take_along_axis(p, y[:, None], axis=1)
  p_rest = p / (1.0 - p_y + 1e-7)
  off = 1.0 - jax.nn.one_hot(y, num_classes)
  per_example = jnp.sum(p_rest * jnp.log(p_rest + 1e-10) * off, axis=1)
  per_example = per_example / jnp.log(num_classes - 1.0)
  focus = (1.0 - p_y[:, 0] + 1e-7)
  return weighted_mean(per_example, weights * focus / jnp.sum(focus))


def feature_norm_loss(g, delta_r) -> jax.Array:
  """SAFN's stepwise norm enlargement: (||g||.detach() + delta_r - ||g||)^2."""
  norm = jnp.linalg.norm(g, axis=1)
  return jnp.mean((jax.lax.stop_gradient(norm) + delta_r - norm) ** 2)


# ---------------------------------------------------------------------------
# Batches and periodic refreshes.


@dataclasses.dataclass(frozen=True)
class Arrays:
  """The task's training data on the device.

  Attributes:
    xs: source training inputs (n_s, ...); ys: labels (n_s,).
    xt: target inputs (n_t, ...).
    class_index: (K, max_count) source indices of each class, padded.
    class_count: (K,) examples per class.
  """
  xs: jax.Array
  ys: jax.Array
  xt: jax.Array
  class_index: jax.Array
  class_count: jax.Array


def make_arrays(task) -> Arrays:
  # numpy on the host: eager jnp ops would each compile a small program.
  ys = np.asarray(task.source_train.y, np.int32)
  counts = np.bincount(ys, minlength=task.num_classes).astype(np.int32)
  order = np.argsort(ys, kind='stable').astype(np.int32)
  starts = np.cumsum(counts) - counts
  cols = np.arange(int(counts.max()))
  index = order[np.minimum(starts[:, None] + cols[None, :], len(ys) - 1)]
  return Arrays(*(jnp.asarray(v) for v in (task.source_train.x, ys,
                                           task.target.x, index, counts)))


def source_batch(arrays: Arrays, key, step, batch_size: int, how: str,
                 weights=None) -> jax.Array:
  """Source indices (batch_size,): 'uniform' epochs, 'balanced' classes
  (batch_size // K per class, JUMBOT's sampler) or 'weighted' by weights."""
  n = arrays.ys.shape[0]
  if how == 'balanced':
    k = arrays.class_count.shape[0]
    per_class = max(1, batch_size // k)
    draws = jax.random.randint(jax.random.fold_in(key, step),
                               (k, per_class), 0, 2**30)
    cols = draws % arrays.class_count[:, None]
    return jnp.take_along_axis(arrays.class_index, cols, axis=1).reshape(-1)
  if how == 'weighted':
    return jax.random.choice(jax.random.fold_in(key, step), n,
                             (batch_size,), p=weights / jnp.sum(weights))
  return common_data.batch_indices(key, step, n, batch_size)


def target_class_weights(spec: Spec, params, arrays: Arrays) -> jax.Array:
  """Mean target prediction over the whole target set, (K,)."""
  logits = classify(spec, params, features(spec, params, arrays.xt))
  return jax.nn.softmax(logits).mean(axis=0)


# ---------------------------------------------------------------------------
# Losses. Each: (spec, params, aux, hp, arrays, step, key) -> (loss, metrics).


def _forward(spec, params, arrays, key, step, how='uniform', weights=None):
  k_s, k_t, _ = jax.random.split(key, 3)
  idx_s = source_batch(arrays, k_s, step, spec.batch_size, how, weights)
  idx_t = common_data.batch_indices(k_t, step, arrays.xt.shape[0],
                                    spec.batch_size)
  ys = arrays.ys[idx_s]
  g_s = features(spec, params, arrays.xs[idx_s])
  g_t = features(spec, params, arrays.xt[idx_t])
  return ys, g_s, classify(spec, params, g_s), g_t, classify(spec, params, g_t)


def loss_source_only(spec, params, aux, hp, arrays, step, key):
  del aux, hp
  ys, _, logits_s, _, _ = _forward(spec, params, arrays, key, step)
  ce = cross_entropy(logits_s, ys).mean()
  return ce, {'ce': ce}


def loss_pada(spec, params, aux, hp, arrays, step, key):
  ys, g_s, logits_s, g_t, _ = _forward(spec, params, arrays, key, step)
  w_class = aux['class_weight'] / aux['class_weight'].max()
  ce = weighted_mean(cross_entropy(logits_s, ys), w_class[ys])

  w_s = w_class[ys] / w_class[ys].max()
  g = grad_reverse(jnp.concatenate([g_s, g_t]), grl_coeff(step,
                                                          spec.num_steps))
  d = Discriminator().apply(params['disc'], g)
  domain = jnp.concatenate([jnp.ones_like(w_s), jnp.zeros_like(w_s)])
  weight = jax.lax.stop_gradient(jnp.concatenate([w_s, jnp.ones_like(w_s)]))
  adv = jnp.mean(weight * bce_with_logits(d, domain))
  return ce + hp['lambda'] * adv, {'ce': ce, 'adv': adv}


def loss_safn(spec, params, aux, hp, arrays, step, key):
  del aux
  ys, g_s, logits_s, g_t, _ = _forward(spec, params, arrays, key, step)
  ce = cross_entropy(logits_s, ys).mean()
  norm = (feature_norm_loss(g_s, hp['delta_r'])
          + feature_norm_loss(g_t, hp['delta_r']))
  return ce + hp['lambda'] * norm, {'ce': ce, 'norm': norm}


def loss_ba3us(spec, params, aux, hp, arrays, step, key, mu: int = 4):
  ys, g_s, logits_s, g_t, logits_t = _forward(spec, params, arrays, key, step)
  bs = spec.batch_size
  w_class = aux['class_weight']

  # Source examples mixed into the target side, a share decaying per epoch.
  share = max(1, bs // mu)
  epochs = max(1, spec.num_steps // spec.interval)
  active = jnp.floor(share * (1.0 - (step // spec.interval) / epochs))
  idx_m = common_data.batch_indices(jax.random.fold_in(key, 7), step,
                                    arrays.ys.shape[0], share)
  ym = arrays.ys[idx_m]
  g_m = features(spec, params, arrays.xs[idx_m])
  on_m = (jnp.arange(share) < active).astype(jnp.float32)

  # Entropy-conditioned, class-weighted domain adversarial loss.
  coeff = grl_coeff(step, spec.num_steps)
  g_all = jnp.concatenate([g_s, g_t, g_m])
  logits_all = jnp.concatenate([logits_s, logits_t,
                                classify(spec, params, g_m)])
  d = Discriminator().apply(params['disc'], grad_reverse(g_all, coeff))
  certainty = 1.0 + jnp.exp(-grad_reverse(entropy(logits_all), coeff))
  cls = jnp.concatenate([w_class[ys], jnp.ones(bs), w_class[ym]])
  src_mask = jnp.concatenate([jnp.ones(bs), jnp.zeros(bs), on_m])
  tgt_mask = jnp.concatenate([jnp.zeros(bs), jnp.ones(bs), jnp.zeros(share)])
  w_src, w_tgt = certainty * src_mask * cls, certainty * tgt_mask * cls
  weight = ((1.0 + active / bs) * w_src / jax.lax.stop_gradient(w_src.sum())
            + w_tgt / jax.lax.stop_gradient(w_tgt.sum()))
  domain = jnp.concatenate([jnp.ones(bs), jnp.zeros(bs + share)])
  adv = (jnp.sum(weight * bce_with_logits(d, domain))
         / (jax.lax.stop_gradient(weight.sum()) + 1e-8))

  ce = weighted_mean(cross_entropy(logits_s, ys), w_class[ys])
  ent = entropy(logits_t).mean()
  cot = complement_entropy(logits_s, ys, spec.num_classes, w_class[ys])
  loss = ce + adv + hp['ent_weight'] * ent + hp['cot_weight'] * cot
  return loss, {'ce': ce, 'adv': adv, 'ent': ent, 'cot': cot}


def loss_ar(spec, params, aux, hp, arrays, step, key):
  ys, _, logits_s, g_t, _ = _forward(spec, params, arrays, key, step,
                                     'weighted', aux['w'])
  ce = cross_entropy(logits_s, ys).mean()

  # Target entropy through a frozen classifier, after 5% of training.
  frozen = dict(params, f=jax.lax.stop_gradient(params['f']))
  ent = entropy(classify(spec, frozen, g_t)).mean()
  on = (step >= int(0.05 * spec.num_steps)).astype(jnp.float32)
  return ce + on * hp['ent_weight'] * ent, {'ce': ce, 'ent': ent}


def loss_jumbot(spec, params, aux, hp, arrays, step, key, static=None):
  del aux
  ys, g_s, logits_s, g_t, logits_t = _forward(spec, params, arrays, key,
                                              step, 'balanced')
  ce = cross_entropy(logits_s, ys).mean()
  M = ot_losses.joint_cost(g_s, ys, g_t, logits_t, hp['eta_1'], hp['eta_2'])
  ot = ot_losses.jumbot_loss(M, epsilon=static['epsilon'], tau=static['tau'],
                             eta_3=hp['eta_3'])
  return ce + ot, {'ce': ce, 'ot': ot}


def loss_mpot(spec, params, aux, hp, arrays, step, key):
  del aux
  ys, g_s, logits_s, g_t, logits_t = _forward(spec, params, arrays, key,
                                              step, 'balanced')
  ce = cross_entropy(logits_s, ys).mean()
  M = ot_losses.joint_cost(g_s, ys, g_t, logits_t, hp['eta_1'], hp['eta_2'])
  mass = ot_losses.mpot_mass(step, spec.num_steps, hp['mass'])
  ot = ot_losses.mpot_loss(M, epsilon=hp['epsilon'], mass=mass,
                           eta_3=hp['eta_3'])
  return ce + ot, {'ce': ce, 'ot': ot}


def refresh_none(spec, params, aux, hp, arrays, key):
  del spec, params, hp, arrays, key
  return aux


def refresh_pada(spec, params, aux, hp, arrays, key):
  del hp, key
  w = target_class_weights(spec, params, arrays)
  return dict(aux, class_weight=w / w.max())


def refresh_ba3us(spec, params, aux, hp, arrays, key):
  del hp, key
  w = target_class_weights(spec, params, arrays)
  return dict(aux, class_weight=w / w.mean())


def refresh_ar(spec, params, aux, hp, arrays, key):
  h_s = features(spec, params, arrays.xs)
  h_t = features(spec, params, arrays.xt)
  return dict(aux, w=ar.source_weights(key, h_s, h_t, hp,
                                        spec.critic_steps))


# ---------------------------------------------------------------------------
# The registry.


@dataclasses.dataclass(frozen=True)
class Method:
  """A PDA method.

  Attributes:
    name: key of the results.
    loss: the loss function (see above).
    refresh: periodic update of the auxiliary weights.
    grid: the benchmark's hyper-parameter grid, name -> values.
    fixed: hyper-parameters the benchmark kept fixed.
    static: names that must be concrete (shape the jitted program).
  """
  name: str
  loss: Callable
  refresh: Callable = refresh_none
  grid: dict = dataclasses.field(default_factory=dict)
  fixed: dict = dataclasses.field(default_factory=dict)
  static: tuple = ()


METHODS = {
    'source_only': Method('source_only', loss_source_only),
    'pada': Method('pada', loss_pada, refresh_pada,
                   {'lambda': (0.1, 0.5, 1.0, 5.0, 10.0)}),
    'safn': Method('safn', loss_safn, grid={
        'lambda': (0.005, 0.01, 0.05, 0.1, 0.5),
        'delta_r': (0.01, 0.1, 1.0)}),
    'ba3us': Method('ba3us', loss_ba3us, refresh_ba3us, {
        'cot_weight': (0.1, 0.5, 1.0, 5.0, 10.0),
        'ent_weight': (0.01, 0.05, 0.1, 0.5, 1.0)}),
    'ar': Method('ar', loss_ar, refresh_ar, {
        'rho0': (2.5, 5.0, 7.5, 10.0), 'up': (5.0, 10.0),
        'low': (-10.0, -5.0), 'ent_weight': (0.01, 0.1, 1.0)},
                 fixed={'c': 1.2}),
    'jumbot': Method('jumbot', loss_jumbot, grid={
        'tau': (0.001, 0.01, 0.1),
        'eta_1': (1e-5, 1e-4, 1e-3, 1e-2, 0.1),
        'eta_2': (0.1, 0.5, 1.0), 'eta_3': (5.0, 10.0, 20.0)},
                     fixed={'epsilon': 0.01}, static=('epsilon', 'tau')),
    'mpot': Method('mpot', loss_mpot, grid={
        'epsilon': (0.5, 1.0, 1.5),
        'eta_1': (1e-4, 1e-3, 1e-2, 0.1, 1.0),
        'eta_2': (0.1, 1.0, 5.0, 10.0), 'mass': (0.1, 0.2, 0.3, 0.4)},
                   fixed={'eta_3': 1.0}),
}


def method(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f'Unknown PDA method {name!r}; choose from '
                     f'{list(METHODS)}.')
  return METHODS[name]


def step_fn(m: Method, spec: Spec, arrays: Arrays, static: dict):
  """One member's training step `(state, step, key) -> (state, metrics)`.

  The state's model_state holds {'hp', 'aux', 'key'}; at multiples of
  spec.interval the auxiliary weights are refreshed from the current
  network first (a `cond` on the shared scalar step, so it stays a real
  branch under vmap). Randomness comes from the member's own key and the
  step, so every member of a population draws its own batches.
  """
  from common import loop  # pylint: disable=g-import-not-at-top

  loss = m.loss
  if m.static:
    loss = functools.partial(loss, static=static)

  def loss_fn(params, model_state, step, key):
    del key
    k = jax.random.fold_in(model_state['key'], step)
    value, metrics = loss(spec, params, model_state['aux'],
                          model_state['hp'], arrays, step, k)
    return value, (model_state, metrics)

  gradient = loop.gradient_step(loss_fn, optimizer(spec))

  def one_step(state, step, key):
    ms = state.model_state
    refresh_key = jax.random.fold_in(ms['key'], -1 - step)
    aux = jax.lax.cond(
        (step > 0) & (step % spec.interval == 0),
        lambda: m.refresh(spec, state.params, ms['aux'], ms['hp'], arrays,
                          refresh_key),
        lambda: ms['aux'])
    aux = jax.tree.map(jax.lax.stop_gradient, aux)
    state = state.replace(model_state=dict(ms, aux=aux))
    new_state, metrics = gradient(state, step, key)

    # A diverged member keeps its last finite state (the benchmark zeroes a
    # NaN loss and goes on), so one bad grid point leaves the others alone.
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                             new_state, state)
    new_state = new_state.replace(step=state.step + 1)
    metrics = {k: jnp.where(finite, v, 0.0) for k, v in metrics.items()}
    metrics['nonfinite'] = 1.0 - finite.astype(jnp.float32)
    return new_state, metrics

  return one_step
