"""Flax modules the lines share.

Each module is written for a batch of examples; a population of models is the
same module vmapped over stacked parameters (see papa/).
"""

import itertools
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


def same_patches(x: jax.Array, kernel_size: Sequence[int]) -> jax.Array:
  """Every example's stride-1, zero-padded ('SAME') patches, flattened.

  x: (batch, *spatial, channels) -> (batch, *spatial, prod(kernel) * channels),
  ordered as a convolution kernel of shape (*kernel, channels, features)
  flattens row-major, so `patches @ kernel.reshape(-1, features)` is the
  convolution.
  """
  spatial = x.shape[1:-1]
  if len(kernel_size) != len(spatial):
    raise ValueError(f'kernel_size {tuple(kernel_size)} does not match the '
                     f'{len(spatial)} spatial dims of input {x.shape}.')
  pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in kernel_size] + [(0, 0)]
  padded = jnp.pad(x, pads)
  shifts = []
  for offset in itertools.product(*(range(k) for k in kernel_size)):
    index = tuple(slice(o, o + n) for o, n in zip(offset, spatial))
    shifts.append(padded[(slice(None), *index)])
  return jnp.concatenate(shifts, axis=-1)


class PatchConv(nn.Module):
  """A stride-1 'SAME' convolution written as patches times a dense kernel.

  Written by hand because of how it vmaps: a population of `nn.Conv`s (one
  kernel per member) lowers to a grouped convolution, which XLA:CPU runs
  1.3-1.8x slower than the batched matmul this module becomes (5 to 15 1-D
  CNNs on MNIST-1D batches; `benchmarks/papa_bench.py`).

  The kernel has nn.Conv's initialisation (LeCun normal over prod(kernel) x
  channels inputs); it costs prod(kernel) times the input's activation
  memory, which small population models can afford.
  """
  features: int
  kernel_size: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(self.features)(same_patches(x, self.kernel_size))


CONVS = ('lax', 'patches')


class CNN(nn.Module):
  """A small CNN for 1-D signals (batch, length, channels) or 2-D images
  (batch, height, width, channels): conv blocks, global average, dense.

  Attributes:
    conv: 'lax' (nn.Conv) or 'patches' (PatchConv, the same function and
      initialisation; much faster for vmapped populations on CPU).
  """
  num_classes: int
  channels: Sequence[int] = (32, 64)
  hidden: int = 128
  conv: str = 'lax'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    spatial_dims = x.ndim - 2
    if spatial_dims not in (1, 2):
      raise ValueError(f'CNN expects (batch, length, channels) or (batch, '
                       f'height, width, channels), got shape {x.shape}.')
    if self.conv not in CONVS:
      raise ValueError(f'Unknown conv {self.conv!r}; choose one of {CONVS}.')
    kernel, window = (3,) * spatial_dims, (2,) * spatial_dims
    h = x
    for features in self.channels:
      if self.conv == 'patches':
        h = PatchConv(features, kernel)(h)
      else:
        h = nn.Conv(features, kernel)(h)
      h = nn.max_pool(nn.relu(h), window, strides=window, padding='SAME')
    h = h.mean(axis=tuple(range(1, 1 + spatial_dims)))
    h = nn.relu(nn.Dense(self.hidden)(h))
    return nn.Dense(self.num_classes)(h)
