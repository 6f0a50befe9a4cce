"""Flax modules the lines share.

Each module is written for a batch of examples; a population of models is the
same module vmapped over stacked parameters (see papa/).
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable] = {
    'selu': nn.selu, 'relu': nn.relu, 'gelu': nn.gelu, 'tanh': jnp.tanh,
    'silu': nn.silu,
}


def activation(name: str) -> Callable:
  if name not in ACTIVATIONS:
    raise ValueError(f'Unknown activation {name!r}; choose one of '
                     f'{sorted(ACTIVATIONS)}.')
  return ACTIVATIONS[name]


class TimeMLP(nn.Module):
  """A vector field v(t, x [, y]): an MLP on the concatenation [x, t, e(y)].

  The architecture of the reference flow-matching code: `depth` hidden layers
  of `width` units with SELU. With `num_classes`, a learned label embedding
  is appended to the input for class-conditional generation.

  Attributes:
    out_dim: output size; defaults to the input size.
  """
  width: int = 64
  depth: int = 3
  out_dim: int | None = None
  num_classes: int = 0
  act: str = 'selu'

  @nn.compact
  def __call__(self, t: jax.Array, x: jax.Array,
               y: jax.Array | None = None) -> jax.Array:
    """t: (batch,) or scalar; x: (batch, dim); y: (batch,) ints or None."""
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype).reshape(-1, 1),
                         (x.shape[0], 1))
    inputs = [x, t]
    if self.num_classes:
      if y is None:
        raise ValueError('This model is class-conditional: pass labels y.')
      inputs.append(nn.Embed(self.num_classes, 16)(y))
    h = jnp.concatenate(inputs, axis=-1)
    for _ in range(self.depth):
      h = activation(self.act)(nn.Dense(self.width)(h))
    return nn.Dense(self.out_dim or x.shape[-1])(h)


class MLP(nn.Module):
  """A classifier MLP on flattened inputs; returns logits (batch, classes)."""
  num_classes: int
  widths: Sequence[int] = (128, 128)
  act: str = 'relu'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    h = x.reshape(x.shape[0], -1)
    for width in self.widths:
      h = activation(self.act)(nn.Dense(width)(h))
    return nn.Dense(self.num_classes)(h)


class CNN(nn.Module):
  """A small CNN for 1-D signals (batch, length, channels) or 2-D images
  (batch, height, width, channels): conv blocks, global average, dense.
  """
  num_classes: int
  channels: Sequence[int] = (32, 64)
  hidden: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    spatial_dims = x.ndim - 2
    if spatial_dims not in (1, 2):
      raise ValueError(f'CNN expects (batch, length, channels) or (batch, '
                       f'height, width, channels), got shape {x.shape}.')
    kernel, window = (3,) * spatial_dims, (2,) * spatial_dims
    h = x
    for features in self.channels:
      h = nn.relu(nn.Conv(features, kernel)(h))
      h = nn.max_pool(h, window, strides=window, padding='SAME')
    h = h.mean(axis=tuple(range(1, 1 + spatial_dims)))
    h = nn.relu(nn.Dense(self.hidden)(h))
    return nn.Dense(self.num_classes)(h)
