"""The PDA networks: feature extractor G and domain discriminator / critic D.
"""

import flax.linen as nn
import jax

class FeatureNet(nn.Module):
  """G: inputs -> bottleneck features (n, bottleneck_dim)."""
  widths: tuple = (128,)
  bottleneck_dim: int = 32
  conv: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = x
    if self.conv:
      window = (2,) * (x.ndim - 2)
      for features in (16, 32):
        h = nn.relu(nn.Conv(features, (3,) * (x.ndim - 2))(h))
        h = nn.max_pool(h, window, strides=window, padding='SAME')
    h = h.reshape(h.shape[0], -1)
    for width in self.widths:
      h = nn.relu(nn.Dense(width)(h))
    return nn.relu(nn.Dense(self.bottleneck_dim)(h))


class Discriminator(nn.Module):
  """D: features -> one logit per example (n,)."""
  hidden: int = 64

  @nn.compact
  def __call__(self, g: jax.Array) -> jax.Array:
    h = nn.relu(nn.Dense(self.hidden)(g))
    h = nn.relu(nn.Dense(self.hidden)(h))
    return nn.Dense(1)(h)[:, 0]
