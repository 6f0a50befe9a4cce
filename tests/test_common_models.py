"""PatchConv computes nn.Conv's function, and the CNN's two convs agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax.linen as nn

from common import models


@pytest.mark.parametrize('shape,kernel', [((2, 9, 3), (3,)),
                                          ((2, 7, 6, 2), (3, 3)),
                                          ((1, 8, 4), (4,))])
def test_patch_conv_equals_lax_conv(shape, kernel):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  conv = nn.Conv(5, kernel)
  params = conv.init(jax.random.PRNGKey(1), x)['params']
  dense = {'Dense_0': {'kernel': params['kernel'].reshape(-1, 5),
                       'bias': params['bias']}}
  ours = models.PatchConv(5, kernel).apply({'params': dense}, x)
  np.testing.assert_allclose(ours, conv.apply({'params': params}, x),
                             rtol=1e-5, atol=1e-5)


def test_cnn_convs_compute_the_same_function():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 40, 1))
  lax_cnn = models.CNN(10, channels=(8, 16), conv='lax')
  patch_cnn = models.CNN(10, channels=(8, 16), conv='patches')
  lax_params = lax_cnn.init(jax.random.PRNGKey(2), x)['params']
  patch_params = dict(lax_params)
  for i, features in enumerate((8, 16)):
    conv = patch_params.pop(f'Conv_{i}')
    patch_params[f'PatchConv_{i}'] = {'Dense_0': {
        'kernel': conv['kernel'].reshape(-1, features), 'bias': conv['bias']}}
  np.testing.assert_allclose(patch_cnn.apply({'params': patch_params}, x),
                             lax_cnn.apply({'params': lax_params}, x),
                             rtol=1e-5, atol=1e-5)


def test_patch_conv_initialisation_matches_nn_conv():
  """LeCun normal over prod(kernel) x channels inputs, as nn.Conv."""
  x = jnp.ones((1, 16, 32))
  conv = nn.Conv(256, (3,)).init(jax.random.PRNGKey(0), x)['params']
  ours = models.PatchConv(256, (3,)).init(jax.random.PRNGKey(0), x)
  ours = ours['params']['Dense_0']['kernel']
  assert ours.shape == (3 * 32, 256)
  np.testing.assert_allclose(ours.std(), conv['kernel'].std(), rtol=0.05)


def test_unknown_conv_is_named():
  with pytest.raises(ValueError, match='conv'):
    models.CNN(10, conv='fft').init(jax.random.PRNGKey(0), jnp.ones((1, 8, 1)))


def test_patches_reject_mismatched_kernel():
  with pytest.raises(ValueError, match='kernel_size'):
    models.same_patches(jnp.ones((1, 8, 1)), (3, 3))
