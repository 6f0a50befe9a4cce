"""Orbax checkpoints that survive a kill at any instant.

Orbax writes each checkpoint into a temporary folder and renames it when
complete, so a kill mid-write leaves the previous checkpoint intact. A
checkpoint folder that still fails to load (a disk error, a copy cut short)
is skipped with a warning in favour of the newest one before it, and renamed
`<step>.unreadable` so that the resumed run can save that step again.

With several processes every process calls every method (orbax coordinates
the writes); process 0 renames, the others wait for it.
"""

import os
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores one pytree (a train state) under `directory`."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def save(self, step: int, tree: Any, *, wait: bool = False) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)
    if wait:
      self._manager.wait_until_finished()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore_latest(self, like: Any) -> tuple[int, Any] | None:
    """Newest loadable checkpoint as (step, tree), or None if there is none.

    Args:
      like: a pytree with the structure, shapes, dtypes and shardings to
        restore into (the freshly initialised state).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    unreadable = []
    found = None
    for step in reversed(self.steps()):
      try:
        tree = self._manager.restore(
            step, args=ocp.args.StandardRestore(abstract))
        found = step, tree
        break
      except Exception as error:  # Any failure means: try the one before.
        logging.warning('Checkpoint at step %d in %s could not be loaded '
                        '(%s); falling back to the previous one.', step,
                        self.directory, error)
        print(f'warning: skipping unreadable checkpoint {step} in '
              f'{self.directory}: {type(error).__name__}', flush=True)
        unreadable.append(step)
    if unreadable:
      self._set_aside(unreadable)
    return found

  def _set_aside(self, steps: list[int]) -> None:
    """Renames unreadable step folders, kept for inspection, not loaded."""
    if jax.process_index() == 0:
      for step in steps:
        source = os.path.join(self.directory, str(step))
        target = f'{source}.unreadable'
        if os.path.exists(target):
          target = f'{target}-{time.time_ns()}'
        os.rename(source, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('checkpoint_set_aside')
    self._manager.reload()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
