"""Plots of gamma, RSI, EB and eta* against the step, with quantile bands.

Each curve pools the values of all members (seeds) and, for fixed-batch
probes, all batches, inside bins of consecutive steps; the line is the
median of a bin, the dark band its 25-75% and the light band its 5-95%.
"""

from typing import Mapping

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from geometry import quantities

PANELS = (('gamma', 'gamma = RSI / EB', 'linear'),
          ('rsi', 'RSI', 'symlog'),
          ('eb', 'EB', 'log'),
          ('eta_star', 'eta* = RSI / EB^2', 'symlog'))


def binned_quantiles(steps: np.ndarray, values: np.ndarray, num_bins: int,
                     quantiles=(0.05, 0.25, 0.5, 0.75, 0.95)):
  """Quantiles of values pooled in bins of steps.

  Args:
    steps: (T,) step of each row.
    values: (T, ...) values; NaN entries (unmeasured) are skipped.
    num_bins: bins of consecutive steps.
    quantiles: which quantiles.

  Returns:
    (centres (K,), q (len(quantiles), K)) over the K non-empty bins.
  """
  steps = np.asarray(steps)
  values = np.asarray(values).reshape(len(steps), -1)
  edges = np.linspace(steps.min(), steps.max() + 1, num_bins + 1)
  centres, rows = [], []
  for lo, hi in zip(edges[:-1], edges[1:]):
    pooled = values[(steps >= lo) & (steps < hi)].ravel()
    pooled = pooled[np.isfinite(pooled)]
    if pooled.size:
      centres.append(0.5 * (lo + hi))
      rows.append(np.quantile(pooled, quantiles))
  return np.asarray(centres), np.asarray(rows).T


def trajectory_figure(path: str, series: Mapping[str, tuple], *,
                      title: str = '', num_bins: int = 40) -> str:
  """Saves a 1 x 4 figure (gamma, RSI, EB, eta*) with one curve per series.

  Args:
    path: the PNG to write.
    series: label -> (steps (T,), `quantities.Geometry` with pieces (T, ...)).
    title: the figure's title.
    num_bins: step bins per curve.

  Returns:
    path.
  """
  fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  typical = {key: [] for key, _, _ in PANELS}
  for i, (label, (steps, geometry)) in enumerate(series.items()):
    assert isinstance(geometry, quantities.Geometry), type(geometry)
    ratios = geometry.ratios()
    for key in typical:
      values = np.abs(np.asarray(ratios[key]))
      typical[key].append(np.nanmedian(values[np.isfinite(values)]))
    color = colors[i % len(colors)]
    for ax, (key, _, _) in zip(axes, PANELS):
      x, q = binned_quantiles(steps, np.asarray(ratios[key]), num_bins)
      if not x.size:
        continue
      ax.fill_between(x, q[0], q[4], color=color, alpha=0.12, linewidth=0)
      ax.fill_between(x, q[1], q[3], color=color, alpha=0.3, linewidth=0)
      ax.plot(x, q[2], color=color, label=label, linewidth=1.4)

  for ax, (key, name, scale) in zip(axes, PANELS):
    ax.set_title(name)
    ax.set_xlabel('step')
    if scale == 'symlog':
      # Linear within a tenth of the typical size: signs stay visible.
      small = min(typical[key]) if typical[key] else 1.0
      ax.set_yscale('symlog', linthresh=max(0.1 * small, 1e-8))
    else:
      ax.set_yscale(scale)
    ax.grid(alpha=0.3)
  axes[0].axhline(0.0, color='black', linewidth=0.8)
  axes[0].legend(fontsize=7)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path
