"""CFM training and sampling speed beside the PyTorch reference (torchcfm).

    .venv/bin/python -m benchmarks.cfm_bench [--threads=1] [--steps=2000]
        [--rounds=2] [--quick]

Task: 8gaussians -> moons, sigma = 0.1, the same model on both sides (3
hidden layers of 64 SELU units on [x, t]: torchcfm's MLP(dim=2,
time_varying=True, w=64) and common.models.TimeMLP(64, 3)), Adam at 1e-3,
fresh minibatches every step. Cases: I-CFM at batch 256, OT-CFM at batch
64, 128 and 256.

Each measurement runs in its own process, pinned to the same CPUs with the
same thread count (torch.set_num_threads, OMP / MKL, XLA's intra-op pool):
ours in this environment (.venv), the reference in .venv-bench (built by
benchmarks/setup_reference.sh). The two sides alternate, case by case and
round by round (the order flips each round), so that a load change on a
shared machine hits both; the table keeps each side's best round.

Both sides train warm-up + timed steps; the warm-up (compilation for ours)
is reported apart, the rate is over the timed steps. Ours is measured from
the wall clock between the ends of fused chunks, so it counts the time the
step waits for the host-side exact coupling, and the coupling prefetcher is
held back during the warm-up chunk, so no batch computed during compilation
reaches the timed steps. Sampling: dopri5 at rtol = atol = 1e-4 on 2000
points (ours: cfm.sampling.integrate_ode, jitted, timed after its
compilation; the reference: torchdyn's NeuralODE). W2 of both sample sets is
scored here against the same held-out targets.

Targets: I-CFM >= 3x the reference's steps/s, OT-CFM >= 1.5x, W2 no worse.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from unittest import mock

import numpy as np

from common import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_PYTHON = os.environ.get(
    'BENCH_REFERENCE_PYTHON', os.path.join(REPO, '.venv-bench', 'bin',
                                           'python'))
REFERENCE_SCRIPT = os.path.join(REPO, 'benchmarks', 'reference_torchcfm.py')
SETUP_SCRIPT = 'benchmarks/setup_reference.sh'

CASES = (('icfm', 256), ('otcfm', 256), ('otcfm', 128), ('otcfm', 64))
TARGET_RATIO = {'icfm': 3.0, 'otcfm': 1.5}
NUM_SAMPLES = 2000
# The key of the held-out test set, as in cfm.experiment (seed + 1).
TEST_SEED = 1


def _thread_env(threads: int) -> dict:
  """Environment that caps every thread pool of a worker at `threads`."""
  env = dict(os.environ, OMP_NUM_THREADS=str(threads),
             MKL_NUM_THREADS=str(threads),
             OPENBLAS_NUM_THREADS=str(threads), MPLBACKEND='Agg',
             PYTHONPATH=REPO)
  flags = env.get('XLA_FLAGS', '')
  # XLA's CPU client sizes its pool from the CPUs it may run on (set by the
  # affinity below); with one thread its Eigen pool is switched off too.
  if threads == 1:
    flags += (' --xla_cpu_multi_thread_eigen=false'
              ' intra_op_parallelism_threads=1')
  env['XLA_FLAGS'] = flags.strip()
  return env


def _pinned(cpus):
  return lambda: os.sched_setaffinity(0, cpus)


def _run_worker(command: list, threads: int, cpus) -> dict:
  """Runs one measuring process; returns the JSON of its last line."""
  done = subprocess.run(command, env=_thread_env(threads), cwd=REPO,
                        preexec_fn=_pinned(cpus), capture_output=True,
                        text=True, check=False)
  lines = done.stdout.strip().splitlines()
  if done.returncode != 0 or not lines:
    raise RuntimeError(f'{" ".join(command)} failed ({done.returncode}):\n'
                       f'{done.stderr[-3000:]}')
  return json.loads(lines[-1])


# --- Our side: runs inside a worker process ------------------------------


def _timed_train(config, warmup_steps: int):
  """`cfm.training.train_flow` with wall-clock stamps at chunk ends.

  The shared loop reports a rate that leaves out the wait for host batches,
  which is where the exact coupling's cost shows; so the loop is called
  with an eval hook that stamps the clock after each fused chunk, and the
  host batch function is held until the warm-up chunk is done.
  """
  from cfm import training  # pylint: disable=g-import-not-at-top

  stamps, coupling_s = [], []
  warm = threading.Event()

  def stamp(state, step):
    del state
    stamps.append((step, time.perf_counter()))
    if step >= warmup_steps:
      warm.set()
    return {}

  def gated(host_batch_fn):
    def batch(step):
      if step >= warmup_steps:
        warm.wait()
      tick = time.perf_counter()
      pairs = host_batch_fn(step)
      coupling_s.append(time.perf_counter() - tick)
      return pairs
    return batch

  real_train = training.loop.train

  def train(*args, **kwargs):
    if kwargs.get('host_batch_fn') is not None:
      kwargs['host_batch_fn'] = gated(kwargs['host_batch_fn'])
    return real_train(*args, eval_fn=stamp,
                      eval_every=config.train.log_every, **kwargs)

  start = time.perf_counter()
  with mock.patch.object(training.loop, 'train', train):
    result, model, data, _ = training.train_flow(config, None, quiet=True)
  stamps = dict(stamps)
  timed_steps = config.train.num_steps - warmup_steps
  timed_s = stamps[config.train.num_steps] - stamps[warmup_steps]
  record = dict(warmup_s=stamps[warmup_steps] - start, train_s=timed_s,
                steps_per_s=timed_steps / timed_s,
                loop_steps_per_s=result.steps_per_second,
                coupling_s=float(np.median(coupling_s or [np.nan])))
  return record, result, model, data


def _sample(model, params, data, repeats: int):
  """Dopri5 samples of held-out sources: (samples, compile s, s, NFE)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cfm import sampling  # pylint: disable=g-import-not-at-top

  x0, _, _ = data.test_set(jax.random.PRNGKey(TEST_SEED), NUM_SAMPLES)

  def vector_field(t, x):
    return model.apply(params, jnp.full((x.shape[0],), t), x)[:, :data.dim]

  solve = jax.jit(lambda x: sampling.integrate_ode(
      vector_field, x, solver='dopri5', rtol=1e-4, atol=1e-4))
  tick = time.perf_counter()
  solution = jax.block_until_ready(solve(jnp.asarray(x0)))
  first_s = time.perf_counter() - tick
  times = []
  for _ in range(repeats):
    tick = time.perf_counter()
    jax.block_until_ready(solve(jnp.asarray(x0)))
    times.append(time.perf_counter() - tick)
  return (np.asarray(solution.x), first_s - min(times), float(np.median(times)),
          int(solution.nfe))


def _lsa_seconds(n: int, repeats: int) -> float:
  """Median seconds of scipy's linear_sum_assignment on an n x n cost."""
  import jax  # pylint: disable=g-import-not-at-top
  import scipy.optimize  # pylint: disable=g-import-not-at-top
  from cfm import couplings  # pylint: disable=g-import-not-at-top
  from common import data as data_lib  # pylint: disable=g-import-not-at-top

  times = []
  for r in range(repeats):
    key_0, key_1 = jax.random.split(jax.random.PRNGKey(r))
    cost = couplings.squared_distances(
        np.asarray(data_lib.sample_8gaussians(key_0, n)),
        np.asarray(data_lib.sample_moons(key_1, n)))
    tick = time.perf_counter()
    scipy.optimize.linear_sum_assignment(cost)
    times.append(time.perf_counter() - tick)
  return float(np.median(times))


def ours(args) -> dict:
  """Trains and samples one case on our side; the worker's JSON record."""
  from experiments.cfm.configs import gaussians_to_moons  # pylint: disable=g-import-not-at-top

  config = gaussians_to_moons.get_config()
  config.method = args.method
  config.train.batch_size = args.batch_size
  config.train.num_steps = args.warmup_steps + args.steps
  # The warm-up is exactly the first fused chunk, the one that compiles.
  config.train.log_every = args.warmup_steps
  config.train.checkpoint_every = 0
  if args.steps % args.warmup_steps:
    raise ValueError(f'--steps={args.steps} must be a multiple of '
                     f'--warmup_steps={args.warmup_steps} (the chunk length).')

  record, result, model, data = _timed_train(config, args.warmup_steps)
  samples, compile_s, sample_s, nfe = _sample(
      model, result.state.params, data, args.sample_repeats)
  if args.samples_out:
    np.save(args.samples_out, samples)
  record.update(side='ours', method=args.method, batch_size=args.batch_size,
                steps=args.steps, sample_s=sample_s,
                sample_compile_s=compile_s, nfe=nfe,
                lsa_s=_lsa_seconds(args.batch_size, args.floor_repeats))
  return record


# --- The driver ------------------------------------------------------------


def _commands(method, batch_size, args, samples_dir, first_round):
  common = [f'--method={method}', f'--batch_size={batch_size}',
            f'--warmup_steps={args.warmup_steps}', f'--steps={args.steps}',
            f'--sample_repeats={args.sample_repeats}']
  out = {}
  for side in ('ours', 'reference'):
    path = os.path.join(samples_dir, f'{side}_{method}_{batch_size}.npy')
    out[side] = common + [f'--samples_out={path if first_round else ""}']
  return {
      'ours': [sys.executable, '-m', 'benchmarks.cfm_bench', '--worker',
               f'--floor_repeats={args.floor_repeats}', *out['ours']],
      'reference': [REFERENCE_PYTHON, REFERENCE_SCRIPT,
                    f'--threads={args.threads}',
                    f'--emd_repeats={args.floor_repeats}',
                    *out['reference']],
  }


def _w2_scores(samples_dir: str) -> dict:
  """W2 of every saved sample set against one held-out target set."""
  import jax  # pylint: disable=g-import-not-at-top
  from cfm import evaluation  # pylint: disable=g-import-not-at-top
  from cfm import training  # pylint: disable=g-import-not-at-top

  data = training.make_data('8gaussians', 'moons', 256, seed=0)
  _, x1, _ = data.test_set(jax.random.PRNGKey(TEST_SEED), NUM_SAMPLES)
  other = data.other_targets(jax.random.PRNGKey(TEST_SEED + 1), NUM_SAMPLES)
  scores = {'floor': evaluation.wasserstein2(other, x1)}
  for name in sorted(os.listdir(samples_dir)):
    samples = np.load(os.path.join(samples_dir, name))
    scores[name[:-len('.npy')]] = evaluation.wasserstein2(samples, x1)
  return scores


def _best(records):
  return max(records, key=lambda r: r['steps_per_s'])


def _tables(results: dict, w2: dict, threads: int, steps: int) -> str:
  train_rows, sample_rows = [], []
  for (method, n), sides in results.items():
    ours_r, ref_r = _best(sides['ours']), _best(sides['reference'])
    ratio = ours_r['steps_per_s'] / ref_r['steps_per_s']
    met = 'yes' if ratio >= TARGET_RATIO[method] else 'NO'
    ot = method == 'otcfm'
    train_rows.append([
        method, n, ours_r['steps_per_s'], ref_r['steps_per_s'], ratio,
        f'>= {TARGET_RATIO[method]:g}x: {met}', 1e3 / ours_r['steps_per_s'],
        1e3 * ours_r['coupling_s'] if ot else '-',
        1e3 * ours_r['lsa_s'] if ot else '-',
        1e3 * ref_r['emd_s'] if ot else '-', ours_r['warmup_s'],
        ref_r['warmup_s'], w2.get(f'ours_{method}_{n}', float('nan')),
        w2.get(f'reference_{method}_{n}', float('nan'))])
    sample_rows.append([
        method, n, ours_r['sample_s'], ours_r['nfe'],
        ours_r['sample_compile_s'], ref_r['sample_s'], ref_r['nfe'],
        ref_r['sample_s'] / ours_r['sample_s'], ref_r['adaptive_sample_s'],
        ref_r['adaptive_nfe']])
  rounds = len(next(iter(results.values()))['ours'])
  train = report.console_table(
      ['method', 'batch', 'ours steps/s', 'ref steps/s', 'ratio', 'target',
       'ours ms/step', 'coupling ms', 'LSA ms', 'ot.emd ms',
       'ours warm-up s', 'ref warm-up s', 'W2 ours', 'W2 ref'], train_rows)
  sample = report.console_table(
      ['method', 'batch', 'ours s', 'ours NFE', 'ours compile s', 'ref s',
       'ref NFE', 'ref s / ours s', 'ref [0,1] s', 'ref [0,1] NFE'],
      sample_rows)
  return f"""\
CFM 8gaussians -> moons: {threads} thread(s) per side, {steps} timed steps
after the warm-up, best of {rounds} alternating round(s).
  coupling ms: our host-side exact coupling per step (cost matrix, scipy
    LSA, re-pairing), which the loop overlaps with the device step;
  LSA ms / ot.emd ms: scipy linear_sum_assignment (ours) and POT's ot.emd
    (the reference's) alone, medians on n x n squared-distance costs;
  W2: after warm-up + timed steps, {NUM_SAMPLES} dopri5 samples against the
    same held-out targets (noise floor {w2['floor']:.3f}).

Training
{train}

Sampling ({NUM_SAMPLES} points, dopri5, rtol = atol = 1e-4; the reference
with torchcfm's t_span = linspace(0, 1, 100), and with [0, 1] alone)
{sample}"""


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--threads', type=int,
                      default=int(os.environ.get('BENCH_THREADS', 1)))
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--warmup_steps', type=int, default=500)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--sample_repeats', type=int, default=2)
  parser.add_argument('--floor_repeats', type=int, default=100)
  parser.add_argument('--quick', action='store_true',
                      help='200 + 400 steps, one round: a smoke run.')
  # Worker mode (the driver calls itself for our side).
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--method', choices=('icfm', 'otcfm'))
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--samples_out', default='')
  args = parser.parse_args(argv)
  if args.quick:
    args.steps, args.warmup_steps, args.rounds = 400, 200, 1
  return args


def main(argv=()):
  """Runs the benchmark; `argv` holds command-line flags (none: defaults)."""
  args = _parse(list(argv))
  if args.worker:
    print(json.dumps(ours(args)))
    return

  if not os.path.exists(REFERENCE_PYTHON):
    raise SystemExit(f'The reference environment is missing '
                     f'({REFERENCE_PYTHON}); build it with `bash '
                     f'{SETUP_SCRIPT}` (`make bench` does so).')
  allowed = sorted(os.sched_getaffinity(0))
  if not 1 <= args.threads <= len(allowed):
    raise SystemExit(f'--threads={args.threads} must be in [1, '
                     f'{len(allowed)}] (the CPUs this process may use).')
  cpus = set(allowed[:args.threads])

  results = {case: {'ours': [], 'reference': []} for case in CASES}
  with tempfile.TemporaryDirectory() as samples_dir:
    for r in range(args.rounds):
      # The order flips each round so neither side always runs first.
      order = ('ours', 'reference') if r % 2 == 0 else ('reference', 'ours')
      for method, n in CASES:
        commands = _commands(method, n, args, samples_dir, r == 0)
        for side in order:
          record = _run_worker(commands[side], args.threads, cpus)
          results[(method, n)][side].append(record)
          print(f'[cfm_bench] round {r + 1} {method} batch {n} {side}: '
                f'{record["steps_per_s"]:.1f} steps/s', flush=True)
    w2 = _w2_scores(samples_dir)
  print(_tables(results, w2, args.threads, args.steps))


if __name__ == '__main__':
  main(sys.argv[1:])
