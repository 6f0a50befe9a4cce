"""The training loop every line shares.

A line supplies a step function `step_fn(state, batch, key) -> (state,
metrics)` (usually built by `gradient_step`) and a way to get the batch of a
step. The loop then

* fuses `log_every` steps into one jitted `lax.scan`, so the host only wakes
  up at log boundaries (on CPU the cost of a small model is dispatch);
* derives every step's randomness from (seed, step) with `fold_in`, so a run
  resumed from a checkpoint repeats the uninterrupted run exactly;
* writes a JSON line per logged step (loss, gradient / parameter / update
  norms, learning rate, steps/s) and a console line with progress and ETA;
* stops with a message naming the step when the loss turns NaN or inf;
* runs eval hooks, saves orbax checkpoints, resumes from the newest one, and
  on SIGTERM / SIGUSR1 / SIGUSR2 saves and stops cleanly (`Preempted`);
* with several processes (`common.distributed`) or an explicit `mesh`, lays
  the state and the batches over all devices of all processes, and only
  process 0 writes logs.

A signal is honoured at the end of the chunk under way (at most `log_every`
steps, plus the host batches it waits for): the loop warns when one chunk
takes longer than `SLOW_CHUNK_SECONDS`, since a scheduler kills a job some
fixed time after its signal.

Batches come either from `batch_fn(step)`, traced inside the jitted chunk
(data that lives on the device), or from `host_batch_fn(step)`, run on the
host in a background thread ahead of the step that uses it (for work that is
not JAX, such as an exact assignment solver). Either must depend on the step
only.
"""

import collections
import concurrent.futures
import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import checkpoint as checkpoint_lib
from common import distributed

Batch = Any
Metrics = dict[str, jax.Array]
StepFn = Callable[[Any, Batch, jax.Array], tuple[Any, Metrics]]

# Slurm kills a job a fixed time after its warning signal (KillWait, 30 s by
# default; submitit signals 90 s ahead): chunks must end well within it.
SLOW_CHUNK_SECONDS = 20.0


class NonFiniteError(FloatingPointError):
  """The loss or gradient turned NaN or inf."""


class Preempted(RuntimeError):
  """The run received SIGTERM or SIGUSR1, saved a checkpoint and stopped."""


class TrainState(flax.struct.PyTreeNode):
  """What a checkpoint holds: the step, parameters and optimizer state.

  `model_state` holds non-trained collections such as BatchNorm statistics.
  Every leaf may carry a leading population axis; `step` stays a scalar.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any = flax.struct.field(default_factory=dict)

  @classmethod
  def create(cls, params, optimizer: optax.GradientTransformation,
             model_state=None) -> 'TrainState':
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               opt_state=optimizer.init(params),
               model_state={} if model_state is None else model_state)


@dataclasses.dataclass(frozen=True)
class StepView:
  """What a probe sees of one gradient step, inside the jitted step.

  Attributes:
    step: index of the step (before the update).
    params: parameters before the update.
    new_params: parameters after the update.
    grads: the minibatch gradient the update used.
    updates: the optimizer's displacement, new_params - params.
    loss: the minibatch loss.
    batch: the minibatch.
    key: the step's random key.
    loss_fn: the line's loss, to evaluate gradients on other batches.
    model_state: non-trained collections before the update.
  """
  step: jax.Array
  params: Any
  new_params: Any
  grads: Any
  updates: Any
  loss: jax.Array
  batch: Any
  key: jax.Array
  loss_fn: Callable
  model_state: Any


Probe = Callable[[StepView], Mapping[str, jax.Array]]


def gradient_step(loss_fn: Callable, optimizer: optax.GradientTransformation,
                  *, learning_rate_fn: Callable | None = None,
                  probes: Sequence[Probe] = ()) -> StepFn:
  """The standard step: one gradient update of `loss_fn`.

  Args:
    loss_fn: `(params, model_state, batch, key) -> (loss, (model_state,
      metrics))`, where metrics is a dict of scalars to log.
    optimizer: the optax transformation.
    learning_rate_fn: the schedule, logged as `learning_rate` when given.
    probes: functions of a `StepView` returning scalars to record at every
      step (geometry measurements, for example); they observe only.

  Returns:
    `step_fn(state, batch, key) -> (state, metrics)`, traceable and
    vmappable over a population axis.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step_fn(state: TrainState, batch, key):
    (loss, (model_state, aux)), grads = grad_fn(
        state.params, state.model_state, batch, key)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.params)
    params = optax.apply_updates(state.params, updates)

    metrics = dict(aux, loss=loss, grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params),
                   update_norm=optax.global_norm(updates))
    if learning_rate_fn is not None:
      metrics['learning_rate'] = learning_rate_fn(state.step)

    view = StepView(step=state.step, params=state.params, new_params=params,
                    grads=grads, updates=updates, loss=loss, batch=batch,
                    key=key, loss_fn=loss_fn, model_state=state.model_state)
    for probe in probes:
      metrics.update(probe(view))

    new_state = state.replace(step=state.step + 1, params=params,
                              opt_state=opt_state, model_state=model_state)
    return new_state, metrics

  return step_fn


@dataclasses.dataclass
class TrainResult:
  """The final state and what was logged, one dict per logged step.

  `history` covers the whole run, resumed or not: after a resume it starts
  with the rows the earlier run wrote to metrics.jsonl. `step_metrics`
  holds the `keep_step_metrics` of every step this call ran:
  name -> array (steps, ...), with 'step' the index of each row.
  """
  state: Any
  history: list[dict]
  steps_per_second: float
  resumed_from: int | None = None
  step_metrics: dict[str, np.ndarray] = dataclasses.field(
      default_factory=dict)

  def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one logged metric."""
    rows = [row for row in self.history if key in row]
    return (np.asarray([row['step'] for row in rows]),
            np.asarray([row[key] for row in rows]))


class _PreemptionFlag:
  """Turns SIGTERM / SIGUSR1 / SIGUSR2 into a flag checked between chunks.

  SIGUSR2 is the warning submitit asks Slurm to send before a time limit.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

  def __init__(self):
    self.raised: int | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.raised = signum

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


class _HostPrefetcher:
  """Computes host batches for upcoming steps on a small thread pool.

  Up to `depth` steps ahead are in flight at once; results come back in step
  order. Several workers help when the host work releases the GIL (scipy's
  assignment solver does), so couplings for consecutive steps run in
  parallel on a multi-core host while the device trains.
  """

  def __init__(self, host_batch_fn, start: int, stop: int, depth: int,
               workers: int):
    self._fn = host_batch_fn
    self._next, self._stop, self._depth = start, stop, depth
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix='host_batches')
    self._pending = collections.deque()
    self._fill()

  def _fill(self):
    while len(self._pending) < self._depth and self._next < self._stop:
      self._pending.append(self._pool.submit(self._fn, self._next))
      self._next += 1

  def take(self, count: int):
    """The next `count` batches stacked along a new leading axis."""
    items = []
    for _ in range(count):
      items.append(self._pending.popleft().result())  # Re-raises errors.
      self._fill()
    return jax.tree.map(lambda *xs: np.stack(xs), *items)

  def close(self):
    self._pool.shutdown(wait=False, cancel_futures=True)


def _host_workers() -> int:
  """Workers for host batches: one per core this process may use, up to 4.

  The device's step is short beside an exact assignment solve, so the cores
  are better spent solving couplings for the next steps in parallel.
  """
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    cores = os.cpu_count() or 1
  return max(1, min(4, cores))


def _to_json(value):
  value = np.asarray(value)
  if value.ndim == 0:
    return value.item()
  return value.tolist()


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def _truncate_jsonl(path: str, last_step: int) -> None:
  """Drops lines logged after `last_step`: a resumed run logs them again."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    kept = [line for line in f
            if line.strip() and json.loads(line).get('step', 0) <= last_step]
  with open(path, 'w') as f:
    f.writelines(kept)


def _read_jsonl(path: str | None) -> list[dict]:
  if not path or not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def train(state: Any, step_fn: StepFn, *, num_steps: int, seed: int,
          workdir: str | None, batch_fn: Callable | None = None,
          host_batch_fn: Callable | None = None, log_every: int = 100,
          checkpoint_every: int = 0,
          eval_fn: Callable[[Any, int], Mapping] | None = None,
          eval_every: int = 0, keep_step_metrics: Iterable[str] = (),
          name: str = 'train', quiet: bool = False,
          console_evals: Iterable[str] | None = None,
          compiler_options: Mapping[str, Any] | None = None,
          mesh: jax.sharding.Mesh | None = None,
          shard_population: bool = False) -> TrainResult:
  """Runs `step_fn` from `state` up to `num_steps`, resuming if possible.

  Args:
    state: the initial train state (a pytree with a scalar `step` field).
    step_fn: `(state, batch, key) -> (state, metrics)`.
    num_steps: total number of steps of the run.
    seed: root of all randomness: step s uses fold_in(PRNGKey(seed), s).
    workdir: where metrics.jsonl and checkpoints/ go; None keeps nothing.
    batch_fn: `step -> batch`, traced inside the jitted chunk.
    host_batch_fn: `step -> batch` of numpy arrays, run on the host ahead of
      time. Exactly one of batch_fn and host_batch_fn is given.
    log_every: steps fused per jitted call and between log lines.
    checkpoint_every: save every this many steps (a multiple of log_every);
      0 saves only at the end.
    eval_fn: `(state, step) -> dict` of scalars, run every `eval_every` steps
      (at log boundaries) and at the end.
    eval_every: see eval_fn; 0 runs it only at the end.
    keep_step_metrics: metric names to keep for every step, not only at log
      steps; written to steps.jsonl and returned in
      `TrainResult.step_metrics` (the geometry probes use this).
    name: label of the console lines.
    console_evals: the eval_fn keys shown on the console lines (all of them
      are written to metrics.jsonl); None shows every key.
    quiet: no console lines.
    compiler_options: XLA options of the jitted chunk, e.g.
      {'xla_backend_optimization_level': 0} where compile time dominates.
    mesh: lay the arrays over this 1-D mesh: state replicated (leaves the
      line already sharded keep their sharding), batch leaves split along
      their leading axis when it divides evenly. Defaults to
      `distributed.loop_mesh(state)`: all devices of all processes when
      there are several processes (or `distributed.use_all_devices()`),
      no layout otherwise.
    shard_population: also split the state's leading (population) axis.

  Returns:
    A `TrainResult`.
  """
  if (batch_fn is None) == (host_batch_fn is None):
    raise ValueError('Give exactly one of batch_fn and host_batch_fn.')
  if num_steps < 1 or log_every < 1:
    raise ValueError(f'num_steps={num_steps} and log_every={log_every} must '
                     'be >= 1.')
  if checkpoint_every and checkpoint_every % log_every:
    raise ValueError(f'checkpoint_every={checkpoint_every} must be a '
                     f'multiple of log_every={log_every}.')
  keep_step_metrics = tuple(keep_step_metrics)
  root_key = jax.random.PRNGKey(seed)

  # Several processes: one layout over all their devices; process 0 logs.
  if mesh is None:
    mesh = distributed.loop_mesh(state)
  layout = _Layout(mesh, state, shard_population) if mesh is not None else None
  if layout:
    state = layout.place_state(state)
  writer = distributed.is_main_process()
  quiet = quiet or not writer

  # Resume from the newest loadable checkpoint of this workdir.
  checkpointer = None
  resumed_from = None
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    checkpointer = checkpoint_lib.Checkpointer(
        os.path.join(workdir, 'checkpoints'))
    restored = checkpointer.restore_latest(state)
    if restored is not None:
      resumed_from, state = restored
      if not quiet:
        print(f'[{name}] resuming from the checkpoint at step '
              f'{resumed_from}', flush=True)
  # The chunks donate their input state; copying it once keeps the caller's
  # arrays alive (a caller may train twice from the same initial state).
  state = jax.tree.map(jnp.copy, state)
  start = int(state.step)
  metrics_path = os.path.join(workdir, 'metrics.jsonl') if workdir else None
  steps_path = os.path.join(workdir, 'steps.jsonl') if workdir else None
  for path in (metrics_path, steps_path):
    if path and writer:
      _truncate_jsonl(path, start)

  # One jitted chunk of steps; its length is static, so at most two compile.
  def one_step(state, host_batch):
    step = state.step
    key = jax.random.fold_in(root_key, step)
    batch = batch_fn(step) if batch_fn is not None else host_batch
    if layout:
      batch = layout.constrain(batch)
    return step_fn(state, batch, key)

  chunks = {}

  def chunk_fn(length):
    if length not in chunks:
      chunks[length] = jax.jit(
          lambda s, hb: jax.lax.scan(one_step, s, hb,
                                     length=length if hb is None else None),
          donate_argnums=0, compiler_options=compiler_options,
          **(layout.jit_kwargs() if layout else {}))
    return chunks[length]

  prefetcher = None
  if host_batch_fn is not None:
    # One chunk ahead is enough to overlap the host with the device.
    prefetcher = _HostPrefetcher(host_batch_fn, start, num_steps,
                                 depth=log_every, workers=_host_workers())

  # A resumed run's history starts with what the interrupted run logged, so
  # curves drawn from it cover the whole run (all of it, when a finished run
  # is launched again).
  history = _read_jsonl(metrics_path) if resumed_from is not None else []
  metrics_file = open(metrics_path, 'a') if metrics_path and writer else None
  steps_file = (open(steps_path, 'a')
                if steps_path and keep_step_metrics and writer else None)
  kept = {k: [] for k in ('step', *keep_step_metrics)}
  measured_steps, measured_seconds = 0, 0.0
  warned_slow = False
  step = start
  try:
    with _PreemptionFlag() as preemption:
      while step < num_steps:
        length = min(log_every, num_steps - step)
        # The clock starts before waiting for host batches: a step is not
        # done until its batch is, so steps/s counts the host's work too.
        tick = time.perf_counter()
        host_batches = prefetcher.take(length) if prefetcher else None
        if layout and host_batches is not None:
          host_batches = layout.place_host(host_batches)
        first_call = length not in chunks

        state, metrics = chunk_fn(length)(state, host_batches)
        metrics = jax.device_get(metrics)
        seconds = time.perf_counter() - tick
        if not first_call:
          measured_steps += length
          measured_seconds += seconds
          if seconds > SLOW_CHUNK_SECONDS and not quiet and not warned_slow:
            warned_slow = True
            print(f'[{name}] warning: {length} steps take {seconds:.0f} s; '
                  'a SIGTERM is honoured only at the end of such a chunk. '
                  'Lower train.log_every to stop sooner.', flush=True)

        _check_finite(metrics, step, name)
        step += length
        row = _summarize(metrics, step, length / seconds)
        if eval_fn is not None and (
            step == num_steps or (eval_every and step % eval_every == 0)):
          row.update({f'eval/{k}': _to_json(v)
                      for k, v in eval_fn(state, step).items()})
        history.append(row)
        if metrics_file:
          metrics_file.write(json.dumps(row) + '\n')
          metrics_file.flush()
        if steps_file:
          _write_step_metrics(steps_file, metrics, keep_step_metrics,
                              step - length)
        if keep_step_metrics:
          kept['step'].append(np.arange(step - length, step))
          for k in keep_step_metrics:
            if k in metrics:
              kept[k].append(np.asarray(metrics[k]))
        if not quiet:
          _print_progress(name, row, step, num_steps, measured_steps,
                          measured_seconds, console_evals)

        # Every process stops at the same chunk, whichever got the signal.
        stop = distributed.any_process(preemption.raised is not None)
        at_checkpoint = checkpoint_every and step % checkpoint_every == 0
        if checkpointer and (at_checkpoint or step == num_steps or stop):
          checkpointer.save(step, state, wait=stop)
        if stop and step < num_steps:
          signum = preemption.raised or 'on another process'
          raise Preempted(
              f'[{name}] received signal {signum} at step {step}; '
              f'checkpoint saved in {workdir}. Run the same command again '
              'to resume.')
  finally:
    if prefetcher:
      prefetcher.close()
    if checkpointer:
      checkpointer.close()
    for f in (metrics_file, steps_file):
      if f:
        f.close()

  if layout:
    state = distributed.to_local(state)
  rate = (measured_steps / measured_seconds if measured_seconds else
          (history[-1]['steps_per_s'] if history else float('nan')))
  step_metrics = {k: np.concatenate(v) for k, v in kept.items() if v}
  return TrainResult(state=state, history=history, steps_per_second=rate,
                     resumed_from=resumed_from, step_metrics=step_metrics)


class _Layout:
  """Where the loop's arrays live on a mesh: state, batches, metrics."""

  def __init__(self, mesh: jax.sharding.Mesh, state: Any,
               shard_population: bool):
    self.mesh = mesh
    self.replicated = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec())

    def state_sharding(x):
      kept = getattr(x, 'sharding', None)
      if (isinstance(kept, jax.sharding.NamedSharding) and
          kept.mesh.size == mesh.size and not kept.is_fully_replicated):
        return kept  # The line laid this leaf out itself.
      if shard_population and np.ndim(x) >= 1:
        return distributed.leading_axis_sharding(mesh, np.shape(x))
      return self.replicated

    self.state_shardings = jax.tree.map(state_sharding, state)

  def place_state(self, state):
    return distributed.place(state, self.state_shardings)

  def constrain(self, batch):
    """Splits a traced batch's leading axis: each device draws its rows."""
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(
            x, distributed.leading_axis_sharding(self.mesh, x.shape)), batch)

  def place_host(self, batches):
    """Host batches (steps, batch, ...): each process uploads its rows."""
    shardings = jax.tree.map(
        lambda x: distributed.leading_axis_sharding(self.mesh, np.shape(x),
                                                    axis=1), batches)
    return distributed.place(batches, shardings)

  def jit_kwargs(self) -> dict:
    # Metrics come back replicated, so every process can read them.
    return {'out_shardings': (self.state_shardings, self.replicated)}


def _check_finite(metrics: Metrics, first_step: int, name: str) -> None:
  for key in ('loss', 'grad_norm'):
    if key not in metrics:
      continue
    values = np.asarray(metrics[key]).reshape(len(metrics[key]), -1)
    bad = ~np.all(np.isfinite(values), axis=1)
    if bad.any():
      at = first_step + int(np.argmax(bad))
      raise NonFiniteError(
          f'[{name}] {key} became {values[np.argmax(bad)].tolist()} at step '
          f'{at}. Lower the learning rate, check the data for NaN, or '
          'resume from the last checkpoint with a fix.')


def _summarize(metrics: Metrics, step: int, steps_per_s: float) -> dict:
  """One log row: loss averaged over the chunk, the rest at its last step."""
  row = {'step': step, 'steps_per_s': steps_per_s}
  for key, values in metrics.items():
    values = np.asarray(values)
    row[key] = _to_json(values.mean(axis=0) if key == 'loss' else values[-1])
  return row


def _write_step_metrics(f, metrics: Metrics, keys: Sequence[str],
                        first_step: int) -> None:
  length = len(next(iter(metrics.values())))
  for i in range(length):
    row = {'step': first_step + i}
    row.update({k: _to_json(metrics[k][i]) for k in keys if k in metrics})
    f.write(json.dumps(row) + '\n')


def _print_progress(name, row, step, num_steps, measured_steps,
                    measured_seconds, console_evals=None):
  rate = (measured_steps / measured_seconds if measured_seconds
          else row['steps_per_s'])
  eta = (num_steps - step) / rate if rate > 0 else float('nan')
  loss = np.mean(row['loss']) if 'loss' in row else float('nan')
  shown = (None if console_evals is None else
           {f'eval/{k}' for k in console_evals})
  evals = ' '.join(f'{k[len("eval/"):]}={np.mean(v):.4g}'
                   for k, v in row.items()
                   if k.startswith('eval/') and (shown is None or k in shown))
  print(f'[{name}] step {step}/{num_steps} ({100 * step / num_steps:3.0f}%) '
        f'loss {loss:.4g} | {rate:,.0f} steps/s | ETA '
        f'{_format_duration(eta)} {evals}'.rstrip(), flush=True)
