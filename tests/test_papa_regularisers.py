"""Per-member regularisers against hand values and scipy's Beta law."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from papa import regularisers


_apply = jax.jit(regularisers.apply, static_argnums=4)


def _hyper(**values):
  scalars = {name: np.asarray(values.get(name, 0.0), np.float32)
             for name in regularisers.NAMES}
  return {k: jnp.asarray(v) for k, v in regularisers.prepare(scalars).items()}


@pytest.mark.parametrize('alpha', [0.2, 1.0, 2.5])
def test_tabulated_beta_draws_follow_scipy(alpha):
  hyper = _hyper(mixup_alpha=alpha)
  u = jax.random.uniform(jax.random.PRNGKey(3), (20000,))
  lam = np.asarray(jax.jit(jax.vmap(regularisers._beta_draw, (0, None)))(
      u, hyper['mixup_quantiles']))

  # Reference draws rounded to float32 like ours (Beta(0.2, 0.2) puts ~2% of
  # its mass within float32 resolution of 0 and 1).
  reference = stats.beta(alpha, alpha).rvs(
      20000, random_state=np.random.default_rng(0)).astype(np.float32)
  assert stats.ks_2samp(lam, reference).pvalue > 1e-3


def test_all_off_leaves_the_batch_alone():
  x = jax.random.normal(jax.random.PRNGKey(0), (7, 11, 1))
  y = jnp.arange(7) % 3
  out, targets = _apply(jax.random.PRNGKey(1), x, y, _hyper(), 3)
  np.testing.assert_array_equal(out, x)
  np.testing.assert_array_equal(targets, jax.nn.one_hot(y, 3))


def test_cutmix_targets_equal_the_pasted_area():
  # Example i is the constant i and its own class: the weight left on class
  # i must be the share of the image that still reads i.
  B = 9
  x = jnp.broadcast_to(jnp.arange(B, dtype=jnp.float32)[:, None, None, None],
                       (B, 5, 6, 1))
  y = jnp.arange(B)
  for seed in range(4):
    out, targets = _apply(jax.random.PRNGKey(seed), x, y,
                                      _hyper(cutmix_alpha=1.0), B)
    kept = np.mean(np.asarray(out)[..., 0] == np.arange(B)[:, None, None],
                   axis=(1, 2))
    own = np.asarray(targets)[np.arange(B), np.arange(B)]
    np.testing.assert_allclose(own, kept, atol=1e-6)
    np.testing.assert_allclose(np.asarray(targets).sum(1), 1.0, atol=1e-6)


def test_erasing_zeroes_one_segment_of_two_to_thirty_three_percent():
  L = 50
  x = jnp.ones((13, L, 1))
  out, _ = _apply(jax.random.PRNGKey(2), x, jnp.zeros(13, int),
                              _hyper(erasing_prob=1.0), 2)
  for row in np.asarray(out)[..., 0]:
    zeros = np.flatnonzero(row == 0)
    assert 1 <= len(zeros) <= round(0.33 * L)
    assert zeros[-1] - zeros[0] + 1 == len(zeros)  # One contiguous segment.


def test_label_smoothing_by_hand():
  _, targets = _apply(jax.random.PRNGKey(0), jnp.zeros((2, 4, 1)),
                                  jnp.asarray([0, 3]),
                                  _hyper(label_smoothing=0.2), 4)
  np.testing.assert_allclose(targets[0], [0.85, 0.05, 0.05, 0.05], atol=1e-6)
  np.testing.assert_allclose(targets[1], [0.05, 0.05, 0.05, 0.85], atol=1e-6)


def test_bad_grid_is_refused():
  with pytest.raises(ValueError, match='config.regularisers'):
    regularisers.check_grid({'mixup_alpha': (-1.0,)})
  with pytest.raises(ValueError, match='Unknown'):
    regularisers.check_grid({'dropout': (0.1,)})
