"""Evaluation of a flow: exact W2, normalized path energy, NFE.

W2 between two equal-size empirical measures with uniform weights is an
assignment problem, solved exactly by scipy's `linear_sum_assignment` (ott-jax
has no exact solver for point clouds; see cfm/couplings.py).
"""

import dataclasses

import numpy as np
import scipy.optimize

from cfm import couplings


def wasserstein2(x: np.ndarray, y: np.ndarray) -> float:
  """Exact 2-Wasserstein distance between {x_i} and {y_j}, uniform weights.

  Args:
    x: (n, d) points.
    y: (n, d) points, the same n.
  """
  x, y = np.asarray(x), np.asarray(y)
  if x.shape != y.shape:
    raise ValueError(f'W2 compares equal-size sets; got {x.shape} and '
                     f'{y.shape}.')
  cost = couplings.squared_distances(x, y)
  rows, cols = scipy.optimize.linear_sum_assignment(cost)
  return float(np.sqrt(cost[rows, cols].mean()))


def normalized_path_energy(path_energy: float, w2_source_target: float) -> float:
  """NPE = |PE - W2^2(q0, q1)| / W2^2(q0, q1) (Tong et al., Section 5).

  The dynamic OT flow has path energy exactly W2^2, so NPE is 0 for it and
  measures how far a learned flow is from straight, optimal transport.
  """
  w2_squared = w2_source_target ** 2
  return float(abs(path_energy - w2_squared) / w2_squared)


@dataclasses.dataclass(frozen=True)
class FlowEvaluation:
  """Numbers for one trained flow.

  Attributes:
    w2: W2 between generated samples and held-out targets.
    w2_noise_floor: W2 between two independent target sets of that size.
    path_energy: mean int ||v||^2 dt over the generated trajectories.
    w2_source_target: W2 between the source and target test sets.
    nfe: vector-field evaluations of the adaptive solve.
  """
  w2: float
  w2_noise_floor: float
  path_energy: float
  w2_source_target: float
  nfe: int

  @property
  def npe(self) -> float:
    return normalized_path_energy(self.path_energy, self.w2_source_target)

  def as_dict(self) -> dict:
    return dict(dataclasses.asdict(self), npe=self.npe)
