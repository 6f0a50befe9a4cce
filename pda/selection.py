"""Model selection scores for partial domain adaptation, and the selection.

Every strategy scores one trained model (one hyper-parameter point at one
checkpoint) so that higher is better, and selection picks the best one:

* `source_val`: accuracy on held-out labelled source examples.
* `dev`: deep embedded validation (You et al., 2019): the source validation
  error importance-weighted by w(x) = p_t(x) / p_s(x), with the control
  variate that removes most of its variance; score = -risk.
* `entropy`: mean prediction entropy on the target (Morerio et al., 2018);
  score = -entropy.
* `snd`: soft neighbourhood density (Saito et al., 2021): the entropy of the
  softmax over scaled cosine similarities between target predictions;
  higher is better.
* `one_shot`: accuracy on one labelled target example per target class.
* `random_100`: accuracy on 100 random labelled target examples.
* `oracle`: accuracy on the whole target (not available in practice).

The module needs numpy (and scikit-learn for DEV's domain classifier) only,
so other projects can `from pda import selection`.
"""

import dataclasses

import numpy as np

SELECTIONS = ('source_val', 'dev', 'entropy', 'snd', 'one_shot',
              'random_100', 'oracle')
LABEL_FREE = ('source_val', 'dev', 'entropy', 'snd')


def softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Share of argmax predictions equal to labels; logits (n, K)."""
  logits, labels = np.asarray(logits), np.asarray(labels)
  if logits.ndim != 2 or len(logits) != len(labels) or not len(labels):
    raise ValueError(f'accuracy needs logits (n, K) and labels (n,) with '
                     f'n > 0; got {logits.shape} and {labels.shape}.')
  return float(np.mean(np.argmax(logits, -1) == labels))


def mean_entropy(logits: np.ndarray) -> float:
  """Mean Shannon entropy (nats) of softmax(logits), logits (n, K)."""
  p = softmax(np.asarray(logits, np.float64))
  return float(np.mean(-np.sum(p * np.log(p + 1e-12), axis=-1)))


def snd(logits: np.ndarray, temperature: float = 0.05) -> float:
  """Soft neighbourhood density of target predictions, logits (n, K).

  With p_i = softmax(logits_i) / ||softmax(logits_i)||, the similarity
  s_ij = <p_i, p_j> / temperature (i != j) is turned into a distribution
  over neighbours by a softmax over j != i; SND is the mean entropy of these
  distributions. Dense, well-clustered predictions give a high SND.
  """
  p = softmax(np.asarray(logits, np.float64))
  p = p / np.linalg.norm(p, axis=-1, keepdims=True)
  s = p @ p.T / temperature
  np.fill_diagonal(s, -np.inf)
  return mean_entropy(s)


def dev_risk(weights: np.ndarray, errors: np.ndarray) -> float:
  """DEV risk of per-example errors under importance weights, both (n,).

  risk = mean(w * e) + eta * mean(w) - eta, with the control variate
  coefficient eta = -Cov(w * e, w) / Var(w) (unbiased estimates); since
  E[w] = 1 under the source, the extra term has mean 0 and cancels most of
  the variance of the weighted error.
  """
  w = np.asarray(weights, np.float64).reshape(-1)
  e = np.asarray(errors, np.float64).reshape(-1)
  if len(w) != len(e) or len(w) < 2:
    raise ValueError(f'dev_risk needs weights and errors of the same length '
                     f'>= 2; got {len(w)} and {len(e)}.')
  weighted = w * e
  var_w = np.var(w, ddof=1)
  if var_w == 0:
    return float(np.mean(weighted))
  eta = -np.cov(weighted, w, ddof=1)[0, 1] / var_w
  return float(np.mean(weighted) + eta * np.mean(w) - eta)


def density_ratio(source_features: np.ndarray, target_features: np.ndarray,
                  query_features: np.ndarray, *, seed: int = 0,
                  max_examples: int = 3000) -> np.ndarray:
  """w(x) = p_t(x) / p_s(x) at the query points, from a domain classifier.

  A logistic regression tells source (1) from target (0) features; with its
  probabilities, w = P(t | x) / P(s | x) * n_s / n_t. The benchmark uses a
  linear SVM with Platt scaling; logistic regression is the same linear
  classifier with calibrated probabilities built in.
  """
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  from sklearn import preprocessing  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  xs = source_features[rng.permutation(len(source_features))[:max_examples]]
  xt = target_features[rng.permutation(len(target_features))[:max_examples]]
  x = np.concatenate([xs, xt]).astype(np.float64)
  d = np.concatenate([np.ones(len(xs)), np.zeros(len(xt))])

  scaler = preprocessing.StandardScaler().fit(x)
  classifier = linear_model.LogisticRegression(max_iter=500)
  classifier.fit(scaler.transform(x), d)
  proba = classifier.predict_proba(
      scaler.transform(np.asarray(query_features, np.float64)))
  p_target = np.clip(proba[:, 0], 1e-6, 1.0)
  p_source = np.clip(proba[:, 1], 1e-6, 1.0)
  return p_target / p_source * len(xs) / len(xt)


@dataclasses.dataclass(frozen=True)
class Outputs:
  """What one model (a grid point at a checkpoint) produced.

  Attributes:
    source_val_logits: (n_v, K) on the source validation examples.
    source_val_features: (n_v, d) bottleneck features of the same.
    source_train_features: (n_s, d) features of the source training set.
    target_logits: (n_t, K) on all target examples.
    target_features: (n_t, d).
  """
  source_val_logits: np.ndarray
  source_val_features: np.ndarray
  source_train_features: np.ndarray
  target_logits: np.ndarray
  target_features: np.ndarray


def scores(outputs: Outputs, source_val_labels: np.ndarray,
           target_labels: np.ndarray, one_shot: np.ndarray,
           random_100: np.ndarray, *, seed: int = 0) -> dict:
  """Every strategy's score of one model (higher is better).

  Args:
    outputs: the model's logits and features.
    source_val_labels: (n_v,).
    target_labels: (n_t,); used only by one_shot, random_100 and oracle.
    one_shot: indices of the 1-shot labelled target examples.
    random_100: indices of the 100 random labelled target examples.
    seed: seed of DEV's domain classifier.
  """
  errors = (np.argmax(outputs.source_val_logits, -1)
            != source_val_labels).astype(np.float64)
  weights = density_ratio(outputs.source_train_features,
                          outputs.target_features,
                          outputs.source_val_features, seed=seed)
  t_logits = outputs.target_logits
  return {
      'source_val': accuracy(outputs.source_val_logits, source_val_labels),
      'dev': -dev_risk(weights, errors),
      'entropy': -mean_entropy(t_logits),
      'snd': snd(t_logits),
      'one_shot': accuracy(t_logits[one_shot], target_labels[one_shot]),
      'random_100': accuracy(t_logits[random_100],
                             target_labels[random_100]),
      'oracle': accuracy(t_logits, target_labels),
  }


def select(score: np.ndarray, target_accuracy: np.ndarray) -> dict:
  """Picks hyper-parameters, then checkpoints, by one strategy's scores.

  As in the benchmark, a strategy first picks the grid point whose best
  checkpoint scores highest (averaged over seeds), then, for that grid
  point, the best-scoring checkpoint of each seed. Ties go to the first
  grid point and the earliest checkpoint.

  Args:
    score: (G, S, C) scores of G grid points, S seeds, C checkpoints.
    target_accuracy: (G, S, C) target accuracies of the same models.

  Returns:
    dict with 'grid_index', 'checkpoints' (S,), 'accuracy' (mean over
    seeds of the chosen models' target accuracy) and 'accuracies' (S,).
  """
  score = np.asarray(score, np.float64)
  target_accuracy = np.asarray(target_accuracy, np.float64)
  if score.ndim != 3 or score.shape != target_accuracy.shape:
    raise ValueError(f'select needs score and target_accuracy of the same '
                     f'shape (G, S, C); got {score.shape} and '
                     f'{target_accuracy.shape}.')
  if np.isnan(score).any():
    score = np.where(np.isnan(score), -np.inf, score)

  grid_index = int(np.argmax(score.max(axis=2).mean(axis=1)))
  checkpoints = np.argmax(score[grid_index], axis=1)
  accuracies = target_accuracy[grid_index, np.arange(score.shape[1]),
                               checkpoints]
  return {'grid_index': grid_index, 'checkpoints': checkpoints.tolist(),
          'accuracy': float(accuracies.mean()),
          'accuracies': accuracies.tolist()}
