"""Selection scores on hand-made predictions with known values."""

import numpy as np
import pytest

from pda import selection


def test_accuracy_and_entropy_hand_values():
  logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
  assert selection.accuracy(logits, np.array([0, 1, 0])) == pytest.approx(2 / 3)
  # Equal logits: entropy log K; a near one-hot: entropy near 0.
  assert selection.mean_entropy(np.zeros((5, 7))) == pytest.approx(np.log(7))
  assert selection.mean_entropy(np.array([[50.0, 0.0]])) < 1e-9
  with pytest.raises(ValueError, match='logits'):
    selection.accuracy(np.zeros((3,)), np.zeros(3))


def test_snd_hand_case():
  # Three predictions: two identical one-hots and one other one-hot. With
  # temperature T, row 0 sees neighbours (1 -> 1/T, 2 -> 0): entropy of
  # softmax([1/T, 0]); row 2 sees both at similarity 0: entropy log 2.
  logits = np.array([[60.0, 0.0], [60.0, 0.0], [0.0, 60.0]])
  t = 0.5
  z = np.array([1 / t, 0.0])
  p = np.exp(z) / np.exp(z).sum()
  h01 = -np.sum(p * np.log(p))
  expected = (2 * h01 + np.log(2)) / 3
  assert selection.snd(logits, temperature=t) == pytest.approx(expected,
                                                               rel=1e-6)


def test_dev_risk_hand_values():
  w = np.array([1.0, 2.0, 3.0, 2.0])
  e = np.array([0.0, 1.0, 1.0, 0.0])
  we = w * e  # [0, 2, 3, 0]
  cov = np.sum((we - we.mean()) * (w - w.mean())) / 3
  var = np.sum((w - w.mean()) ** 2) / 3
  eta = -cov / var
  expected = we.mean() + eta * w.mean() - eta
  assert selection.dev_risk(w, e) == pytest.approx(expected)
  # Constant weights: the control variate vanishes.
  assert selection.dev_risk(np.ones(5), np.array([0, 1, 0, 1, 1.0])) == (
      pytest.approx(0.6))
  with pytest.raises(ValueError, match='same length'):
    selection.dev_risk(np.ones(3), np.ones(4))


def test_density_ratio_recovers_gaussian_shift():
  # p_s = N(0, 1), p_t = N(1, 1): p_t / p_s = exp(x - 1/2), linear logit.
  rng = np.random.default_rng(0)
  xs = rng.normal(0.0, 1.0, (3000, 1))
  xt = rng.normal(1.0, 1.0, (3000, 1))
  query = np.array([[-1.0], [0.0], [0.5], [1.0]])
  w = selection.density_ratio(xs, xt, query)
  np.testing.assert_allclose(w, np.exp(query[:, 0] - 0.5), rtol=0.15)


def test_select_picks_grid_point_then_checkpoints():
  # G=2, S=2, C=3. Point 1 has the best mean-over-seeds of max score.
  score = np.array([[[0.1, 0.9, 0.2], [0.1, 0.2, 0.3]],
                    [[0.5, 0.6, 0.7], [0.8, 0.1, 0.8]]])
  acc = np.arange(12, dtype=float).reshape(2, 2, 3) / 12
  out = selection.select(score, acc)
  assert out['grid_index'] == 1
  assert out['checkpoints'] == [2, 0]  # ties go to the earliest checkpoint
  assert out['accuracy'] == pytest.approx((acc[1, 0, 2] + acc[1, 1, 0]) / 2)
  with pytest.raises(ValueError, match='same'):
    selection.select(score, acc[:, :, :2])


def test_scores_oracle_and_labelled_subsets():
  rng = np.random.default_rng(1)
  n_v, n_t, k, d = 11, 23, 4, 3
  yv = rng.integers(0, k, n_v)
  yt = rng.integers(0, 2, n_t)
  out = selection.Outputs(
      source_val_logits=np.eye(k)[yv] * 5, source_val_features=rng.normal(
          size=(n_v, d)), source_train_features=rng.normal(size=(31, d)),
      target_logits=np.eye(k)[yt] * 5, target_features=rng.normal(
          size=(n_t, d)))
  s = selection.scores(out, yv, yt, np.array([0, 1]), np.arange(10))
  assert set(s) == set(selection.SELECTIONS)
  assert s['oracle'] == s['one_shot'] == s['random_100'] == 1.0
  assert s['source_val'] == 1.0 and s['dev'] == pytest.approx(0.0, abs=1e-9)
