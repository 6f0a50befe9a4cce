"""Config checks that run before any work starts.

Every line's config is an `ml_collections.ConfigDict` returned by a
`get_config()` function. `absl`'s `config_flags` already rejects overrides of
keys that do not exist and values of the wrong type; the helpers here add the
range checks, so that a bad value fails at launch with the key's name and the
way to fix it, instead of as a NaN or a shape error minutes later.
"""

import math
from typing import Any, Iterable

import ml_collections


class ConfigError(ValueError):
  """A config value is missing, of the wrong kind or out of range."""


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split('.'):
    if part not in node:
      raise ConfigError(
          f'config.{key} is missing: add it to the config file or pass '
          f'--config.{key}=VALUE.')
    node = node[part]
  return node


def _fail(key: str, value: Any, requirement: str, example: str) -> None:
  raise ConfigError(
      f'config.{key}={value!r} {requirement}; set it with '
      f'--config.{key}={example}.')


def require_int(config, key: str, *, minimum: int | None = None) -> int:
  """Checks that config[key] is an integer (bool excluded) >= minimum."""
  value = _get(config, key)
  if isinstance(value, bool) or not isinstance(value, int):
    _fail(key, value, 'must be an integer', minimum if minimum else 1)
  if minimum is not None and value < minimum:
    _fail(key, value, f'must be >= {minimum}', max(minimum, 1))
  return value


def require_float(config, key: str, *, minimum: float | None = None,
                  maximum: float | None = None, strict_minimum: bool = False,
                  strict_maximum: bool = False) -> float:
  """Checks that config[key] is a finite number within the given bounds."""
  value = _get(config, key)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    _fail(key, value, 'must be a number', 0.1)
  if not math.isfinite(value):
    _fail(key, value, 'must be finite (not NaN or inf)', 0.1)
  if minimum is not None:
    too_small = value <= minimum if strict_minimum else value < minimum
    if too_small:
      sign = '>' if strict_minimum else '>='
      _fail(key, value, f'must be {sign} {minimum}', minimum + 0.1)
  if maximum is not None:
    too_big = value >= maximum if strict_maximum else value > maximum
    if too_big:
      sign = '<' if strict_maximum else '<='
      example = maximum - 0.1 * max(abs(maximum), 1.0) if strict_maximum \
          else maximum
      _fail(key, value, f'must be {sign} {maximum}', round(example, 6))
  return float(value)


def require_choice(config, key: str, choices: Iterable[str]) -> str:
  """Checks that config[key] is one of the allowed names."""
  value = _get(config, key)
  choices = sorted(choices)
  if value not in choices:
    _fail(key, value, f'is not one of {choices}', choices[0])
  return value


def require_choices(config, key: str, choices: Iterable[str]) -> tuple:
  """Checks that config[key] is a non-empty comma-separated list of names."""
  value = _get(config, key)
  names = _split_names(value)
  choices = sorted(choices)
  unknown = [name for name in names if name not in choices]
  if not names or unknown:
    _fail(key, value, f'must list names from {choices} (unknown: {unknown})',
          ','.join(choices[:2]))
  return names


def _split_names(value) -> tuple:
  if isinstance(value, str):
    return tuple(name.strip() for name in value.split(',') if name.strip())
  return tuple(value)


def require_training(config) -> None:
  """The checks every line's `config.train` block shares."""
  require_int(config, 'seed', minimum=0)
  require_int(config, 'train.num_steps', minimum=1)
  require_int(config, 'train.batch_size', minimum=1)
  require_float(config, 'train.learning_rate', minimum=0.0,
                strict_minimum=True)
  require_int(config, 'train.log_every', minimum=1)
  require_int(config, 'train.checkpoint_every', minimum=0)
  every, chunk = config.train.checkpoint_every, config.train.log_every
  if every % chunk:
    # Checkpoints are written between fused chunks of log_every steps.
    raise ConfigError(
        f'config.train.checkpoint_every={every} must be 0 or a multiple of '
        f'config.train.log_every={chunk}; set --config.train.'
        f'checkpoint_every={max(chunk, every - every % chunk)}.')


def training_defaults() -> ml_collections.ConfigDict:
  """The `config.train` block with defaults every line starts from."""
  return ml_collections.ConfigDict(dict(
      num_steps=1000,
      batch_size=256,
      learning_rate=1e-3,
      # Steps fused into one jitted call; logging and checkpoints happen at
      # these boundaries, so the host is out of the loop in between.
      log_every=100,
      # 0 disables checkpoints; otherwise a multiple of log_every.
      checkpoint_every=1000,
  ))
