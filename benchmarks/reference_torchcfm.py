"""The PyTorch reference side of benchmarks/cfm_bench.py (torchcfm 1.0.7).

    .venv-bench/bin/python benchmarks/reference_torchcfm.py \
        --method=otcfm --batch_size=256 --warmup_steps=500 --steps=2000 \
        --threads=2 --samples_out=/tmp/ref.npy

Runs in .venv-bench (see benchmarks/setup_reference.sh), never imports this
repository, and prints one JSON object on its last line. The training loop is
the one of torchcfm's 2-D examples: MLP(dim=2, time_varying=True, w=64),
Adam at 1e-3, sigma = 0.1, fresh 8gaussians and moons minibatches each step,
and the exact coupling through POT's `ot.emd` for OT-CFM. Sampling is
torchdyn's NeuralODE with dopri5 at atol = rtol = 1e-4 over
t_span = linspace(0, 1, 100), as in those examples.
"""

import argparse
import json
import time

import numpy as np
import ot
import torch
from torchcfm import conditional_flow_matching as cfm_lib
from torchcfm import utils as cfm_utils
from torchcfm.models import models as cfm_models
from torchdyn.core import NeuralODE

SIGMA = 0.1


class CountingField(torch.nn.Module):
  """torchcfm's `torch_wrapper` with a count of its evaluations (NFE)."""

  def __init__(self, model):
    super().__init__()
    self.model = model
    self.nfe = 0

  def forward(self, t, x, *args, **kwargs):
    del args, kwargs
    self.nfe += 1
    return self.model(torch.cat([x, t.repeat(x.shape[0])[:, None]], 1))


def train(model, optimizer, matcher, batch_size: int, steps: int) -> float:
  """`steps` training steps of the reference loop; returns their seconds."""
  tick = time.perf_counter()
  for _ in range(steps):
    optimizer.zero_grad()
    x0 = cfm_utils.sample_8gaussians(batch_size)
    x1 = cfm_utils.sample_moons(batch_size)
    t, x_t, u_t = matcher.sample_location_and_conditional_flow(x0, x1)
    v_t = model(torch.cat([x_t, t[:, None]], dim=-1))
    loss = torch.mean((v_t - u_t) ** 2)
    loss.backward()
    optimizer.step()
  return time.perf_counter() - tick


def emd_seconds(n: int, repeats: int) -> float:
  """Median seconds of one `ot.emd` on an n x n minibatch cost, as torchcfm
  calls it (uniform marginals, squared Euclidean cost, one thread)."""
  times = []
  for _ in range(repeats):
    x0 = cfm_utils.sample_8gaussians(n)
    x1 = cfm_utils.sample_moons(n)
    cost = (torch.cdist(x0, x1) ** 2).numpy()
    a, b = ot.unif(n), ot.unif(n)
    tick = time.perf_counter()
    ot.emd(a, b, cost, numThreads=1)
    times.append(time.perf_counter() - tick)
  return float(np.median(times))


def sample(model, num_samples: int, repeats: int, num_times: int = 100):
  """Dopri5 samples from fresh source points; (samples, seconds, NFE).

  torchdyn's solver lands on every time of t_span, so `num_times` sets a
  floor of 6 (num_times - 1) + 2 evaluations; 100 is what torchcfm's
  examples use, 2 leaves the step size to the error control alone.
  """
  field = CountingField(model)
  node = NeuralODE(field, solver='dopri5', sensitivity='adjoint', atol=1e-4,
                   rtol=1e-4)
  t_span = torch.linspace(0, 1, num_times)
  times = []
  for _ in range(repeats):
    x0 = cfm_utils.sample_8gaussians(num_samples)
    field.nfe = 0
    tick = time.perf_counter()
    with torch.no_grad():
      trajectory = node.trajectory(x0, t_span=t_span)
    times.append(time.perf_counter() - tick)
  return trajectory[-1].numpy(), float(np.median(times)), field.nfe


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--method', choices=('icfm', 'otcfm'), required=True)
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--warmup_steps', type=int, default=500)
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--num_samples', type=int, default=2000)
  parser.add_argument('--sample_repeats', type=int, default=3)
  parser.add_argument('--emd_repeats', type=int, default=200)
  parser.add_argument('--samples_out', default='')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()

  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  np.random.seed(args.seed)

  model = cfm_models.MLP(dim=2, time_varying=True, w=64)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  matcher = (cfm_lib.ExactOptimalTransportConditionalFlowMatcher(SIGMA)
             if args.method == 'otcfm'
             else cfm_lib.ConditionalFlowMatcher(SIGMA))

  # Warm-up steps (allocator, first-call dispatch), then the timed steps.
  warmup = train(model, optimizer, matcher, args.batch_size,
                 args.warmup_steps)
  timed = train(model, optimizer, matcher, args.batch_size, args.steps)

  samples, sample_s, nfe = sample(model, args.num_samples,
                                  args.sample_repeats)
  if args.samples_out:
    np.save(args.samples_out, samples)
  _, adaptive_s, adaptive_nfe = sample(model, args.num_samples,
                                       args.sample_repeats, num_times=2)

  result = dict(
      side='reference', method=args.method, batch_size=args.batch_size,
      threads=torch.get_num_threads(), steps=args.steps,
      warmup_s=warmup, train_s=timed, steps_per_s=args.steps / timed,
      sample_s=sample_s, nfe=nfe, adaptive_sample_s=adaptive_s,
      adaptive_nfe=adaptive_nfe, num_samples=args.num_samples,
      emd_s=emd_seconds(args.batch_size, args.emd_repeats),
      torch=torch.__version__)
  print(json.dumps(result))


if __name__ == '__main__':
  main()
