"""Orbax checkpoints: train state + grain iterator state, saved atomically, restored into target shardings.

Orbax writes each step into a temporary directory and renames it when complete, so an interrupted save never
leaves a half-written checkpoint that `latest_step()` would pick up. The trainer never saves a state with a
non-finite value, and `restore` checks what it read: a checkpoint that fails to restore or holds a non-finite
value is skipped and the previous one tried; once one restores, the skipped ones are reported in one line each
and moved aside to `checkpoints_unusable/<step>` (kept, not deleted).
"""

import os
import shutil

import grain
import jax
import orbax.checkpoint as ocp

from vitclip import console
from vitclip.errors import ConfigError
from vitclip.optim import path_str
from vitclip.train_step import all_finite

STATE, DATA = 'state', 'data'
UNUSABLE = 'checkpoints_unusable'


class Checkpointer:
  """Checkpoints under `workdir/checkpoints/<step>/{state,data}`."""

  def __init__(self, workdir: str, keep: int = 3, save_every: int = 1):
    _use_replica_parallel_only_across_processes()
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=(STATE, DATA),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every, create=True))

  @staticmethod
  def steps_in(workdir: str) -> list[int]:
    """Steps of the finished checkpoints of `workdir` (read-only: orbax renames a step dir into place once
    complete, so only digit-named dirs holding `state/` count)."""
    directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(d) for d in names if d.isdigit() and os.path.isdir(os.path.join(directory, d, STATE)))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator=None, force: bool = False) -> bool:
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state, data_iterator=None, step: int | None = None):
    """Restores into `abstract_state` (ShapeDtypeStructs carrying target shardings); the mesh may differ from
    the one the checkpoint was written with. `data_iterator` is restored in place when given.

    Without `step`: the latest usable checkpoint. Unusable ones newer than it are moved aside with a warning
    (module doc). When none can be restored (e.g. the code no longer matches every checkpoint), nothing is moved
    and a ConfigError lists the reasons.
    """
    if step is not None:
      return self._restore(step, abstract_state, data_iterator)
    failed = []  # (step, reason), newest first.
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self._restore(step, abstract_state, data_iterator)
        if not bool(is_finite(state)):
          raise ValueError('it holds non-finite values')
      except Exception as e:  # pylint: disable=broad-except  # Any read failure means: try the previous one.
        failed.append((step, _one_line(e)))
        continue
      for bad, reason in failed:  # Only now: a usable checkpoint shows the newer ones are damaged.
        console.warn(f'checkpoint {bad} of {self.directory} is unusable ({reason}); it was moved to '
                     f'{UNUSABLE}/{bad} and the previous checkpoint is used.')
        self._move_aside(bad)
      return state
    reasons = '; '.join(f'step {s}: {r}' for s, r in failed)
    raise ConfigError(f'no checkpoint of {self.directory} can be restored ({reasons}); nothing was moved. If the '
                      'code or config changed since they were written, restore them with the matching version, or '
                      'use a new --workdir.')

  def _restore(self, step: int, abstract_state, data_iterator):
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))[STATE]
    if data_iterator is not None:
      position = data_iterator.get_state().get('next_index')  # Batches handed out (in-process iterators).
      if position is not None and position != step:
        raise ValueError(f'its data position ({position} batches read) is not its step; it was written by an '
                         'input pipeline that counted examples, not batches (vitclip before batched reading)')
    return jax.tree.map(_as_target_key, restored, abstract_state)

  def _move_aside(self, step: int):
    if jax.process_index() == 0:
      target = os.path.join(self.workdir, UNUSABLE, str(step))
      os.makedirs(os.path.dirname(target), exist_ok=True)
      if os.path.exists(target):
        shutil.rmtree(target)
      os.rename(os.path.join(self.directory, str(step)), target)
    self.manager.reload()  # Forget the moved step, so retention and latest_step() see the remaining ones.

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def _use_replica_parallel_only_across_processes():
  """Orbax's replica-parallel save (on by default off GPU) splits each replicated array among its replicas so that
  several hosts share the writing. In one process every replica is local, so it only adds one device slice per
  replica per array (thousands of tiny slices on 8 CPU devices: seconds per save); keep it for multi-process runs."""
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=jax.process_count() > 1), override=True)


def _as_target_key(restored, target):
  """Orbax stores a typed PRNG key as its raw uint32 data and restores that; wrap it back into the target's key
  type, so a resumed state has the types of a fresh one (and runs the same compiled step)."""
  if jax.dtypes.issubdtype(getattr(target, 'dtype', None), jax.dtypes.prng_key) and not jax.dtypes.issubdtype(
      restored.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(restored, impl=target.dtype._impl.name)  # pylint: disable=protected-access
  return restored


def _one_line(error: Exception) -> str:
  text = f'{type(error).__name__}: {error}'.strip().splitlines()
  return (text[0] if text else type(error).__name__)[:300]


is_finite = jax.jit(all_finite)  # bool scalar: every float in a pytree is finite.


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
  steps = Checkpointer.steps_in(path)
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


def restore_params(path: str, abstract_params, fix: str = 'Use the config the checkpoint was written with.',
                   item: str = 'params'):
  """Restores only the params of a checkpoint directory `path` (a step dir or a workdir), from a params-only
  checkpoint (`save_params`) or a full train state, into `abstract_params` (ShapeDtypeStructs carrying the
  target shardings; a subtree such as {'img': ...} reads only that part).

  Shapes are checked against the checkpoint's metadata first: a missing key or a wrong shape is one ConfigError
  naming the key and both shapes, followed by `fix`. `item`: another field of a train state to read the same
  way, e.g. 'ema' (A-CLIP's EMA image tower).
  """
  path = step_dir(path)
  if item == 'params':
    expected = {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract_params)}
    check_param_shapes(stored_param_shapes(path), expected, path, fix)
  restored = ocp.PyTreeCheckpointer().restore(
      os.path.join(path, STATE),
      args=ocp.args.PyTreeRestore(
          item={item: abstract_params},
          restore_args={item: jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding),
                                           abstract_params)},
          partial_restore=True))
  return restored[item]
