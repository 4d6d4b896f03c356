"""Orbax checkpoints: train state + grain iterator state, saved atomically, restored into target shardings.

Orbax writes each step into a temporary directory and renames it when complete, so an interrupted save never
leaves a half-written checkpoint that `latest_step()` would pick up.
"""

import os

import grain
import jax
import orbax.checkpoint as ocp

from vitclip.config import ConfigError
from vitclip.optim import path_str

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


def step_dir(path: str) -> str:
  """`path` if it is a step dir (holds `state/`), else the latest step dir of the workdir `path`."""
  if os.path.isdir(os.path.join(path, STATE)):
    return path
  directory = os.path.join(os.path.abspath(path), 'checkpoints')
  # Read-only (no CheckpointManager, which may write): orbax renames a step dir to its number once complete.
  names = os.listdir(directory) if os.path.isdir(directory) else []
  steps = [int(d) for d in names if d.isdigit() and os.path.isdir(os.path.join(directory, d, STATE))]
  if not steps:
    raise FileNotFoundError(f'no checkpoint under {directory}; train first or name a directory that holds '
                            'checkpoints/<step>/state.')
  return os.path.join(directory, str(max(steps)))


def stored_param_shapes(path: str) -> dict[str, tuple[int, ...]]:
  """'img/embedding/kernel' -> shape of every param saved in the checkpoint at `path` (read from metadata only)."""
  with ocp.StandardCheckpointer() as reader:
    meta = reader.metadata(os.path.join(step_dir(path), STATE))
  tree = getattr(meta, 'item_metadata', meta)  # StepMetadata (newer orbax) or the tree itself.
  if tree is None or 'params' not in tree:
    raise ConfigError(f'{step_dir(path)}/{STATE} holds no "params"; write it with checkpoint.save_params or '
                      'train.py.')
  return {path_str(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(tree['params'])}


def check_param_shapes(stored: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], where: str,
                       fix: str):
  """Raises one ConfigError naming the first key of `expected` (in order) missing from or shaped differently in
  `stored`, with its shape in the checkpoint `where`, the expected shape and `fix` (what to do)."""
  for key, shape in expected.items():
    if key not in stored:
      raise ConfigError(f'{where}: param {key!r} (expected shape {shape}) is missing from the checkpoint. {fix}')
    if tuple(stored[key]) != tuple(shape):
      raise ConfigError(f'{where}: param {key!r} has shape {tuple(stored[key])} in the checkpoint but the model '
                        f'expects {tuple(shape)}. {fix}')


def restore_params(path: str, abstract_params, fix: str = 'Use the config the checkpoint was written with.'):
  """Restores only the params of a checkpoint directory `path` (a step dir or a workdir), from a params-only
  checkpoint (`save_params`) or a full train state, into `abstract_params` (ShapeDtypeStructs carrying the
  target shardings; a subtree such as {'img': ...} reads only that part).

  Shapes are checked against the checkpoint's metadata first: a missing key or a wrong shape is one ConfigError
  naming the key and both shapes, followed by `fix`.
  """
  path = step_dir(path)
  expected = {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract_params)}
  check_param_shapes(stored_param_shapes(path), expected, path, fix)
  restored = ocp.PyTreeCheckpointer().restore(
      os.path.join(path, STATE),
      args=ocp.args.PyTreeRestore(
          item={'params': abstract_params},
          restore_args={'params': jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding),
                                               abstract_params)},
          partial_restore=True))
  return restored['params']
