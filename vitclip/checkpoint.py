"""Orbax checkpoints: train state + grain iterator state, saved atomically, restored into target shardings.

Orbax writes each step into a temporary directory and renames it when complete, so an interrupted save never
leaves a half-written checkpoint that `latest_step()` would pick up.
"""

import os

import grain
import jax
import orbax.checkpoint as ocp

STATE, DATA = 'state', 'data'


class Checkpointer:
  """Checkpoints under `workdir/checkpoints/<step>/{state,data}`."""

  def __init__(self, workdir: str, keep: int = 3, save_every: int = 1):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=(STATE, DATA),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator=None, force: bool = False) -> bool:
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state, data_iterator=None, step: int | None = None):
    """Restores into `abstract_state` (ShapeDtypeStructs carrying target shardings); the mesh may differ from
    the one the checkpoint was written with. `data_iterator` is restored in place when given."""
    step = self.latest_step() if step is None else step
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items))[STATE]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs of `tree` that carry `shardings` (the restore target)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def save_params(workdir: str, params, step: int = 0):
  """Writes a params-only checkpoint `workdir/checkpoints/<step>/state` = {'params': params} (no optimizer state).

  Converted pretrained weights use this layout: `restore_params`, `eval.py` and `config.init_from` read it.
  """
  ckpt = Checkpointer(workdir)
  ckpt.manager.save(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave({'params': params})}),
                    force=True)
  ckpt.wait()
  ckpt.close()


def restore_params(path: str, abstract_params):
  """Restores only the params of a train-state checkpoint directory `path` (a step dir or a workdir)."""
  ckpt = Checkpointer(path) if not os.path.isdir(os.path.join(path, STATE)) else None
  if ckpt is not None:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f'no checkpoint under {ckpt.directory}; train first or name a checkpoint dir.')
    path = os.path.join(ckpt.directory, str(step))
  with ocp.StandardCheckpointer() as reader:
    meta = reader.metadata(os.path.join(path, STATE))
  del meta
  restored = ocp.PyTreeCheckpointer().restore(
      os.path.join(path, STATE),
      args=ocp.args.PyTreeRestore(
          item={'params': abstract_params},
          restore_args={'params': jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding),
                                               abstract_params)},
          partial_restore=True))
  return restored['params']
