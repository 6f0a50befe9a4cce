"""Sweeps: expansion, names, skip / resume on re-launch, submitit, table."""

import csv
import glob
import json
import os
import re
import signal
import threading
import time

import pytest

from cfm import training
from common import config as config_lib
from common import sweep
import launch_helpers


def test_product_is_ordered_with_the_last_key_fastest():
  runs = sweep.product({'method': ['icfm', 'otcfm', 'sbcfm'], 'seed': [0, 7]})
  assert len(runs) == 6
  assert runs[:3] == [{'method': 'icfm', 'seed': 0},
                      {'method': 'icfm', 'seed': 7},
                      {'method': 'otcfm', 'seed': 0}]
  with pytest.raises(ValueError, match="axis 'seed'"):
    sweep.product({'seed': []})


def test_names_spell_the_overrides():
  assert sweep.run_name({}) == 'base'
  assert (sweep.run_name({'method': 'otcfm', 'train.learning_rate': 3e-4})
          == 'method=otcfm,train.learning_rate=0.0003')
  assert sweep.run_name({'source': 'a/b c'}) == 'source=a_b_c'
  long = sweep.run_name({f'key{i}': 'x' * 9 for i in range(17)})
  assert len(long) == 120
  assert long != sweep.run_name({f'key{i}': 'x' * 9 for i in range(18)})


def test_axes_parse_values_and_multiply_the_file_sweep(tmp_path):
  assert sweep.parse_axis('seed=0,3') == ('seed', [0, 3])
  assert sweep.parse_axis('train.learning_rate=1e-3,x') == (
      'train.learning_rate', [0.001, 'x'])
  with pytest.raises(ValueError, match='key=v1,v2'):
    sweep.parse_axis('seed')

  runs = sweep.expand([{'method': 'icfm'}, {'method': 'otcfm'}],
                      str(tmp_path), {'seed': [0, 1, 2]})
  assert [r.name for r in runs][:4] == [
      'method=icfm,seed=0', 'method=icfm,seed=1', 'method=icfm,seed=2',
      'method=otcfm,seed=0']
  assert runs[4].workdir == str(tmp_path / 'method=otcfm,seed=1')
  with pytest.raises(config_lib.ConfigError, match='share the names'):
    sweep.expand([{'seed': 1}, {'seed': 1}], str(tmp_path))


def test_sweep_from_the_config_file(tmp_path):
  path = tmp_path / 'swept.py'
  path.write_text(
      'from common import sweep\n'
      'from experiments.cfm.configs import gaussians_to_moons\n'
      'def get_config(variant=""):\n'
      '  return gaussians_to_moons.get_config(variant)\n'
      'def get_sweep(variant=""):\n'
      '  return sweep.product({"method": ["icfm", "otcfm"],\n'
      '                        "seed": [0, 1, 2]})\n')
  config, entries = sweep.load_config_file(f'{path}:tiny')
  assert config.train.num_steps == 200 and len(entries) == 6

  # Or as a field of the config, which the runs do not inherit.
  config.sweep = [{'seed': 4}, {'seed': 5}]
  assert sweep.sweep_entries(config) == [{'seed': 4}, {'seed': 5}]
  run_config = sweep.with_overrides(config, {'seed': 5, 'train.num_steps': 9})
  assert 'sweep' not in run_config and run_config.train.num_steps == 9
  assert config.seed == 0
  with pytest.raises(config_lib.ConfigError, match="'train.num_step'"):
    sweep.with_overrides(config, {'train.num_step': 9})


@pytest.mark.slow
def test_relaunch_skips_finished_and_resumes_started(tmp_path, capsys):
  config = launch_helpers.fast_config()
  runs = sweep.expand([{}], str(tmp_path), {'seed': [0, 1]})
  done, cut = runs

  # seed=0 finished earlier; seed=1 stopped at step 20 of 40.
  os.makedirs(done.workdir)
  with open(os.path.join(done.workdir, 'results.json'), 'w') as f:
    json.dump({'w2': -1.0}, f)
  half = sweep.with_overrides(config, dict(cut.overrides,
                                           **{'train.num_steps': 20}))
  training.train_flow(half, cut.workdir, quiet=True)
  assert [r.status for r in runs] == ['finished', 'started']
  assert sweep.run_status(str(tmp_path / 'seed=2')) == 'new'
  capsys.readouterr()

  outcomes = sweep.launch(config, runs, 'local')
  out = capsys.readouterr().out
  assert outcomes == {done.name: 'skipped', cut.name: 'finished'}
  assert 'resuming from the checkpoint at step 20' in out
  with open(os.path.join(done.workdir, 'results.json')) as f:
    assert json.load(f) == {'w2': -1.0}
  with open(os.path.join(cut.workdir, 'metrics.jsonl')) as f:
    assert [json.loads(line)['step'] for line in f] == [20, 40]

  headers, table = sweep.gather(str(tmp_path))
  assert headers[:3] == ['run', 'seed', 'status'] and 'w2_euler' in headers
  assert [row[:3] for row in table] == [['seed=0', 0, 'finished'],
                                        ['seed=1', 1, 'finished']]
  assert table[0][headers.index('w2')] == -1.0
  csv_path, md_path = sweep.write_table(str(tmp_path), headers, table)
  with open(csv_path) as f:
    assert len(list(csv.reader(f))) == 3
  assert open(md_path).read().startswith('| run | seed | status |')


def _submitit_workers(folder) -> list[int]:
  """Process ids of the submitit tasks running jobs of `folder`."""
  pids = []
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        command = f.read().decode(errors='replace')
    except OSError:
      continue
    if 'submitit.core._submit' in command and str(folder) in command:
      pids.append(int(pid))
  return pids


@pytest.mark.slow
def test_submitit_local_executor_runs_a_two_point_sweep(tmp_path):
  """Two jobs of an array; the long one gets submitit's time-limit signal,
  saves, is requeued and resumes."""
  config = launch_helpers.fast_config()
  long = {'train.num_steps': 3000, 'train.log_every': 10,
          'train.checkpoint_every': 1000, 'train.batch_size': 32}
  runs = sweep.expand([{'method': 'icfm', **long}, {'method': 'otcfm'}],
                      str(tmp_path))
  outcomes = {}
  launcher = threading.Thread(target=lambda: outcomes.update(sweep.launch(
      config, runs, 'slurm', cluster='local', slurm={'timeout_min': 5})))
  launcher.start()
  metrics = os.path.join(runs[0].workdir, 'metrics.jsonl')
  deadline = time.monotonic() + 150
  while not (os.path.exists(metrics) and os.path.getsize(metrics)):
    assert time.monotonic() < deadline and launcher.is_alive()
    time.sleep(0.02)
  for pid in _submitit_workers(tmp_path):
    os.kill(pid, signal.SIGUSR2)
  launcher.join(timeout=200)

  assert outcomes == {runs[0].name: 'finished', 'method=otcfm': 'finished'}
  with open(os.path.join(runs[0].workdir, 'results.json')) as f:
    assert json.load(f)['num_steps'] == 3000
  logs = ''.join(open(p).read() for p in glob.glob(
      str(tmp_path / 'submitit' / '*' / '*_log.out')))
  stopped = re.search(r'received signal 12 at step (\d+)', logs)
  assert stopped and 'requeue the job' in logs
  assert f'resuming from the checkpoint at step {stopped[1]}' in logs

  # A second launch finds both finished and submits nothing.
  assert sweep.launch(config, runs, 'slurm', cluster='local') == {
      runs[0].name: 'skipped', runs[1].name: 'skipped'}
