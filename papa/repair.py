"""REPAIR: restore the unit statistics an average of networks loses.

Averaging the weights of networks that differ shrinks the variance of their
hidden units (the units' directions disagree and partly cancel), so an
average of diverse members can collapse even when each member is good; the
first PAPA-all average of members from different initialisations drops to
chance without it. REPAIR (Jordan et al., "REPAIR: REnormalizing Permuted
Activations for Interpolation Repair", ICLR 2023; used after every PAPA-all
and PAPA-2 averaging in the PAPA paper) rescales every hidden unit of the
averaged network so that its mean and standard deviation over a batch of
inputs equal the same average of the members' own unit statistics:

  averaged member i   w_i' = sum_j alpha_ij w_j
  target statistics   mu_i* = sum_j alpha_ij mu_j,  sd_i* = sum_j alpha_ij sd_j
  correction          z <- (z - mu(w_i')) sd_i* / sd(w_i') + mu_i*

folded into the layer's kernel and bias, one layer after another (a layer's
statistics depend on the layers below it being repaired already).

Written here because no JAX library provides it. The units repaired are the
outputs of every `nn.Dense` and `nn.Conv` with a bias except the last layer
(the logits), found with flax's `capture_intermediates`: the layers of
`common.models.MLP` and of `common.models.CNN` (either convolution). Layers
without a bias are the ones that feed BatchNorm, whose batch statistics
renormalise every unit during training, so they are left alone; ResNet-20
has nothing to repair.
"""

from typing import Any, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp

PyTree = Any

# Added to the variance, as BatchNorm does, so a dead unit does not divide by 0.
EPSILON = 1e-5


def _is_repairable_call(module: nn.Module, method_name: str) -> bool:
  return (method_name == '__call__' and
          isinstance(module, (nn.Dense, nn.Conv)) and module.use_bias)


def _layer_outputs(tree: dict, prefix: tuple = ()) -> list:
  """(path, output) of every captured layer, in the order they ran."""
  found = []
  for name, value in tree.items():
    if name == '__call__':
      found.append((prefix, value[0]))
    else:
      found.extend(_layer_outputs(value, prefix + (name,)))
  return found


def hidden_unit_statistics(model: nn.Module, params: PyTree,
                           model_state: PyTree, x: jax.Array) -> list:
  """[(path, mean, sd)] of every hidden layer's output units.

  The mean and sd are over every axis but the last (examples, and positions
  for a convolution), so each is of shape (units,); `path` locates the
  layer's {'kernel', 'bias'} in `params`.
  """
  _, captured = model.apply({'params': params, **model_state}, x,
                            train=False,
                            capture_intermediates=_is_repairable_call,
                            mutable=['intermediates'])
  outputs = _layer_outputs(captured['intermediates'])[:-1]  # Not the logits.
  stats = []
  for path, z in outputs:
    axes = tuple(range(z.ndim - 1))
    mean = z.mean(axis=axes)
    sd = jnp.sqrt(z.var(axis=axes) + EPSILON)
    stats.append((path, mean, sd))
  return stats


def repair(model: nn.Module, params: PyTree, model_state: PyTree,
           targets: Sequence[tuple], x: jax.Array) -> PyTree:
  """One averaged network with its hidden units restored to `targets`.

  Args:
    model: the flax classifier.
    params, model_state: the averaged network's variables (no population
      axis).
    targets: [(mean, sd)] per hidden layer, in the order of
      `hidden_unit_statistics`, each of shape (units,).
    x: the inputs the statistics are measured on.

  Returns:
    params with every hidden layer's kernel (output axis last) and bias
    rescaled.
  """
  for index, (target_mean, target_sd) in enumerate(targets):
    path, mean, sd = hidden_unit_statistics(model, params, model_state,
                                            x)[index]
    flat = traverse_util.flatten_dict(params)
    kernel, bias = flat[path + ('kernel',)], flat[path + ('bias',)]
    scale = target_sd / sd  # (units,)
    flat[path + ('kernel',)] = kernel * scale
    flat[path + ('bias',)] = (bias - mean) * scale + target_mean
    params = traverse_util.unflatten_dict(flat)
  return params


def repair_population(model: nn.Module, member_params: PyTree,
                      member_state: PyTree, averaged_params: PyTree,
                      averaged_state: PyTree, mixing: jax.Array,
                      x: jax.Array) -> PyTree:
  """REPAIR after an averaging of one population.

  Args:
    member_params, member_state: the P members before averaging, leaves
      (P, ...).
    averaged_params, averaged_state: after it, leaves (P, ...), with
      averaged member i = sum_j mixing[i, j] member j.
    mixing: (P, P), rows summing to one.
    x: (batch, ...) inputs the statistics are measured on.

  Returns:
    averaged_params repaired, leaves (P, ...).
  """
  stats = jax.vmap(
      lambda p, s: [(m, sd) for _, m, sd in
                    hidden_unit_statistics(model, p, s, x)])(member_params,
                                                             member_state)
  # Member i's targets: the mixing-weighted member statistics, (P, units).
  targets = [(mixing @ mean, mixing @ sd) for mean, sd in stats]
  return jax.vmap(lambda p, s, t: repair(model, p, s, t, x))(
      averaged_params, averaged_state, targets)
