"""Trajectory plots of 2-D flows."""

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def plot_trajectories(panels: dict, path: str, targets=None,
                      max_paths: int = 300) -> None:
  """One panel per method: source points, paths and generated points.

  Args:
    panels: method name -> (trajectory (num_saved, n, 2), title suffix).
    path: where the PNG goes.
    targets: (m, 2) held-out target samples drawn underneath, or None.
    max_paths: paths drawn per panel (points are all drawn).
  """
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2),
                           squeeze=False)
  for ax, (name, (trajectory, subtitle)) in zip(axes[0], panels.items()):
    trajectory = np.asarray(trajectory)
    shown = trajectory[:, :max_paths]
    if targets is not None:
      ax.scatter(*np.asarray(targets).T, s=2, color='tab:orange', alpha=0.25,
                 label='target (held out)')
    ax.plot(shown[..., 0], shown[..., 1], color='olive', alpha=0.15, lw=0.6)
    ax.scatter(*trajectory[0].T, s=2, color='black', alpha=0.6,
               label='source x0')
    ax.scatter(*trajectory[-1].T, s=2, color='tab:blue', alpha=0.7,
               label='generated x1')
    ax.set_title(f'{name}\n{subtitle}', fontsize=10)
    ax.set_aspect('equal')
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0][0].legend(loc='lower left', fontsize=8, markerscale=4)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_losses(curves: dict, path: str) -> None:
  """Training loss against step, one line per method."""
  fig, ax = plt.subplots(figsize=(5.5, 3.5))
  for name, (steps, losses) in curves.items():
    ax.plot(steps, losses, label=name)
  ax.set_xlabel('step')
  ax.set_ylabel('flow-matching loss')
  ax.set_yscale('log')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
