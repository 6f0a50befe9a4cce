"""Classifiers of the PAPA line: the shared MLP / CNN and a ResNet-20.

Every model maps (batch, *example_shape) to logits (batch, classes) and takes
`train`, so BatchNorm uses batch statistics in training and its running
averages in evaluation. A model with BatchNorm exposes `bn_momentum`: with it
set to 0, one forward pass in training mode writes exactly that batch's
statistics, which is how `soups.recompute_batch_stats` re-estimates them
after averaging.
"""

from typing import Sequence

import flax.linen as nn
import jax

from common import models as common_models


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with BatchNorm and an identity or 1x1 shortcut."""
  features: int
  stride: int
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    spatial_dims = x.ndim - 2
    kernel, strides = (3,) * spatial_dims, (self.stride,) * spatial_dims
    norm = lambda: nn.BatchNorm(use_running_average=not train,
                                momentum=self.bn_momentum)

    h = nn.Conv(self.features, kernel, strides, use_bias=False)(x)
    h = nn.relu(norm()(h))
    h = nn.Conv(self.features, kernel, use_bias=False)(h)
    h = norm()(h)

    # Project the shortcut when the shape changes (option B of ResNet).
    if x.shape[-1] != self.features or self.stride != 1:
      x = nn.Conv(self.features, (1,) * spatial_dims, strides,
                  use_bias=False)(x)
      x = norm()(x)
    return nn.relu(h + x)


class ResNet20(nn.Module):
  """The CIFAR ResNet of He et al. (2016), depth 6n + 2 (n=3 gives 20).

  Three stages of n basic blocks with `width`, 2 `width`, 4 `width`
  channels; works on images (batch, H, W, C) and signals (batch, L, C).
  """
  num_classes: int
  width: int = 16
  blocks_per_stage: int = 3
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    spatial_dims = x.ndim - 2
    if spatial_dims not in (1, 2):
      raise ValueError(f'ResNet20 expects (batch, length, channels) or '
                       f'(batch, height, width, channels), got {x.shape}.')
    h = nn.Conv(self.width, (3,) * spatial_dims, use_bias=False)(x)
    h = nn.relu(nn.BatchNorm(use_running_average=not train,
                             momentum=self.bn_momentum)(h))
    for stage in range(3):
      for block in range(self.blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        h = BasicBlock(self.width * 2 ** stage, stride,
                       self.bn_momentum)(h, train)
    h = h.mean(axis=tuple(range(1, 1 + spatial_dims)))
    return nn.Dense(self.num_classes)(h)


MODELS = ('mlp', 'cnn', 'resnet20')


def make_model(name: str, num_classes: int, *, widths: Sequence[int] = (),
               conv: str = 'patches') -> nn.Module:
  """A classifier by name; `widths` overrides the layer / channel sizes.

  mlp: hidden widths (default (128, 128)); cnn: conv channels (default
  (32, 64)) and `conv`, its convolution ('patches' vmaps into batched
  matmuls, fast for populations on CPU; 'lax' is nn.Conv); resnet20: the
  first stage's width (default 16).
  """
  widths = tuple(widths)
  if name == 'mlp':
    return common_models.MLP(num_classes, widths=widths or (128, 128))
  if name == 'cnn':
    return common_models.CNN(num_classes, channels=widths or (32, 64),
                             conv=conv)
  if name == 'resnet20':
    return ResNet20(num_classes, width=widths[0] if widths else 16)
  raise ValueError(f'Unknown model {name!r}; choose one of {list(MODELS)} '
                   '(config.model.name).')


def has_batch_norm(model: nn.Module) -> bool:
  return hasattr(model, 'bn_momentum')
