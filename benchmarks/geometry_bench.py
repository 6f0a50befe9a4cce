"""What measuring RSI and EB adds to a training step, as a ratio.

    .venv/bin/python -m benchmarks.geometry_bench

An MLP (64, 64) on MNIST-1D, 3 seeds vmapped, measured side by side in one
as jitted chunks of 200 steps (what `common.loop.train` runs between logs),
interleaved so that every variant sees the same load, best of 7 rounds:

  plain        the step alone;
  step probe   + minibatch gradient and optimizer displacement against four
               references (final, doubled, other seed, random);
  + probe set  + 4 fixed batches of 256 every 40 steps;
  + full batch + the whole training split once an epoch.

The step probe is a handful of dot products over the weights, so its target
is a ratio <= 1.1 at batch 64; the batch-set probes cost what their
gradients cost, amortised over their period.
"""

import time

import jax
import jax.numpy as jnp

from common import data as data_lib
from common import report
from geometry import protocol
from geometry import quantities
from geometry import setups

CHUNK, REPEATS = 200, 7


def _chunk(setup, probe_list):
  """A jitted scan of CHUNK steps, as the loop runs them between logs."""
  step_fn = protocol.population_step(setup.loss_fn, setup.optimizer,
                                     probes=probe_list)

  def one(state, _):
    key = jax.random.fold_in(jax.random.PRNGKey(0), state.step)
    return step_fn(state, setup.batch_fn(state.step), key)

  return jax.jit(lambda s: jax.lax.scan(one, s, None, length=CHUNK))


def _seconds_per_step(setup, variants: dict) -> dict:
  """Interleaved timings (one chunk of each variant per round), best round:
  the variants see the same machine load."""
  chunks = {k: _chunk(setup, v) for k, v in variants.items()}
  states = {k: protocol.init_state(setup) for k in variants}
  for k, fn in chunks.items():  # Compile and warm up.
    states[k] = jax.block_until_ready(fn(states[k]))[0]
  best = {k: float('inf') for k in variants}
  for _ in range(REPEATS):
    for k, fn in chunks.items():
      tick = time.perf_counter()
      states[k] = jax.block_until_ready(fn(states[k]))[0]
      best[k] = min(best[k], (time.perf_counter() - tick) / CHUNK)
  return best


def measure(batch_size: int) -> list:
  dataset = data_lib.load('mnist1d', seed=0)
  setup = setups.classifier_setup(
      dataset, seeds=(0, 1, 2), widths=(64, 64), batch_size=batch_size,
      num_steps=10 * CHUNK, learning_rate=0.05, probe_every=40)

  # Stand-in references of the right shapes: the cost does not depend on
  # their values.
  w = setup.params
  references = {
      'final': quantities.Reference(jax.tree.map(lambda x: x * 0.5, w)),
      'doubled': quantities.Reference(jax.tree.map(lambda x: x * 0.7, w)),
      'other_seed': quantities.Reference(
          jax.tree.map(lambda x: jnp.roll(x, 1, axis=0), w)),
      'random': quantities.Reference(w, kind='direction')}
  all_probes = protocol.make_probes(setup, references)

  seconds = _seconds_per_step(setup, {
      'plain': [], 'step probe': all_probes[:1],
      '+ probe set': all_probes[:2], '+ full batch': all_probes})
  plain = seconds.pop('plain')
  return [[batch_size, label, 1e3 * plain, 1e3 * t, t / plain]
          for label, t in seconds.items()]


def main():
  rows = []
  for batch_size in (16, 256):
    rows += measure(batch_size)
  print(report.console_table(
      ['batch', 'measured', 'plain ms/step', 'measured ms/step',
       'time ratio'], rows))


if __name__ == '__main__':
  main()
