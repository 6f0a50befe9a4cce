"""Step time of a vmapped population against single-member steps.

    .venv/bin/python -m benchmarks.papa_bench

For P = 2, 5, 10 MLP members on MNIST-1D-sized batches, measured side by
side in one run:

  population  one jitted, vmapped step of all P members (PAPA pull on);
  P x single  P times one jitted single-member step;
  loop        a Python loop over members: slice member j out of the
              stacked state, run its jitted step, stack the states back.

Printed as ratios; the target on CPU is population / loop <= 1 and
population / (P x single) <= 1.2.

A second table times a population of 1-D CNNs on the same batches with the
two convolutions of `common.models.CNN`: 'lax' (nn.Conv, which vmaps into a
grouped convolution) and 'patches' (PatchConv, which vmaps into batched
matmuls), printed as lax / patches.
"""

import time

import jax
import numpy as np
import optax

from common import data as data_lib
from common import models as common_models
from common import report
from papa import population
from papa import regularisers

REPEATS = 30


def _time(fn, state, repeats=REPEATS):
  state = fn(state)  # Compile and warm up.
  jax.block_until_ready(state)
  tick = time.perf_counter()
  for _ in range(repeats):
    state = fn(state)
  jax.block_until_ready(state)
  return (time.perf_counter() - tick) / repeats


def _population(model, P: int, data: data_lib.Split):
  seeds = list(range(P))
  return population.Population(
      model, data, 10, member_seeds=seeds,
      group_size=P, optimizer=optax.adam(1e-3),
      learning_rate_fn=optax.constant_schedule(1e-3), batch_size=128,
      hyper=regularisers.member_combinations(regularisers.DEFAULT_GRID,
                                             seeds),
      methods=population.Method('papa', every=1, a=0.99))


def measure(P: int, data: data_lib.Split) -> dict:
  pop = _population(common_models.MLP(10, widths=(128, 128)), P, data)
  key = jax.random.PRNGKey(0)

  # The population step (pull at every step: the worst case).
  pop_step = jax.jit(lambda s: pop.step_fn(s, pop.batch_fn(s.step), key)[0])
  t_pop = _time(pop_step, pop.init())

  # One member's step, on its own.
  state, step_fn, batch_fn = pop.single_run(0)
  single = jax.jit(lambda s: step_fn(s, batch_fn(s.step), key)[0])
  t_single = _time(single, state)

  # A Python loop over the members of the stacked state.
  steps = [jax.jit(lambda s, f=pop.single_run(j): f[1](s, f[2](s.step),
                                                       key)[0])
           for j in range(P)]

  def loop_step(stacked):
    members = [jax.tree.map(lambda w, j=j: w[j] if w.ndim else w, stacked)
               for j in range(P)]
    members = [steps[j](m) for j, m in enumerate(members)]
    return jax.tree.map(lambda *ws: (np.stack(ws) if ws[0].ndim else ws[0]),
                        *members)

  stacked = pop.init()
  t_loop = _time(loop_step, stacked, repeats=max(5, REPEATS // P))
  return dict(P=P, t_pop=t_pop, t_single=t_single, t_loop=t_loop)


def measure_conv(P: int, data: data_lib.Split, conv: str) -> float:
  """Seconds per step of a P-member population of 1-D CNNs."""
  pop = _population(common_models.CNN(10, channels=(32, 64), conv=conv), P,
                    data)
  key = jax.random.PRNGKey(0)
  step = jax.jit(lambda s: pop.step_fn(s, pop.batch_fn(s.step), key)[0])
  return _time(step, pop.init(), repeats=5)


def main():
  data = data_lib.load('mnist1d').train
  rows = []
  for P in (2, 5, 10):
    m = measure(P, data)
    rows.append([P, 1e3 * m['t_pop'], 1e3 * m['t_single'],
                 1e3 * m['t_loop'], m['t_pop'] / (P * m['t_single']),
                 m['t_pop'] / m['t_loop']])
  print(report.console_table(
      ['P', 'population ms', 'single ms', 'loop ms',
       'pop / (P x single)', 'pop / loop'], rows))

  signals = data_lib.Split(data.x[..., None], data.y)  # (n, 40, 1)
  rows = []
  for P in (5, 15):
    t_lax, t_patches = (measure_conv(P, signals, conv)
                        for conv in ('lax', 'patches'))
    rows.append([P, 1e3 * t_lax, 1e3 * t_patches, t_lax / t_patches])
  print(report.console_table(
      ['CNN P', 'lax conv ms', 'patch conv ms', 'lax / patches'], rows))


if __name__ == '__main__':
  main()
