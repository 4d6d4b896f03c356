"""Starting a run from the params of another model directory: a converted checkpoint or any vitclip workdir.

  config.init_from = DIR            # DIR/config.json, DIR/checkpoints/<step>/state, DIR's tokenizer
  config.init_from_towers = 'img'   # top-level params to load: img, txt, t, b ('' = all of this model's)
  config.optim.frozen = '^img/'     # LiT: the loaded image tower stays fixed

Every loaded param must exist in DIR with the shape this model expects. The one exception is the learned image
position embedding: when the image resolution differs, its 2-D grid is resampled bilinearly (CLS token kept).
The checks read shapes only (DIR/config.json -> model -> eval_shape, and the checkpoint's metadata), so a
mismatch stops with one message before anything is initialised or compiled. The optimizer state starts fresh.
"""

import dataclasses
import math
import os

import jax
import jax.numpy as jnp

from vitclip import checkpoint as checkpoint_lib
from vitclip import config as config_lib
from vitclip import sharding
from vitclip.models import abstract_params, build_model
from vitclip.models.vit import resample_posemb
from vitclip.optim import path_str

TOWERS = ('img', 'txt', 't', 'b')  # Top-level params of vitclip.models.TwoTower.
POSEMB = ('img', 'pos_embedding')
_SECTIONS = {'img': 'image', 'txt': 'text'}  # Param subtree -> config.model section that shapes it.


def selected_towers(config, available=TOWERS) -> tuple[str, ...]:
  """`config.init_from_towers` ('img,txt' ...) as a tuple; '' selects every name in `available`."""
  names = tuple(n.strip() for n in config.init_from_towers.split(',') if n.strip())
  unknown = [n for n in names if n not in TOWERS]
  if unknown:
    raise config_lib.ConfigError(f'config.init_from_towers={config.init_from_towers!r} names {unknown}; use a '
                                 f'comma-separated subset of {",".join(TOWERS)} ("" loads all).')
  return names or tuple(n for n in TOWERS if n in available)


def source_config(config):
  """The resolved config of `config.init_from` (keys missing from its config.json keep this run's values)."""
  return config_lib.resolve(config_lib.load_model_dir(config.init_from, base=config))


@dataclasses.dataclass
class Plan:
  """What `load_into_state` reads: checked against the target before anything runs."""
  step_dir: str  # DIR/checkpoints/<step>.
  abstract: dict  # Selected source params as ShapeDtypeStructs carrying the target shardings.
  resample_grid: int | None  # Target image grid side when the position embedding is resampled, else None.
  num_prefix: int  # Tokens before the grid in the image position embedding (1 with a CLS token).
  fix: str  # What to do when the checkpoint does not match DIR/config.json.


def plan(run) -> Plan:
  """Checks `run.config.init_from` against the run's abstract params (shapes only); see the module doc."""
  return plan_for(run.config, run.abstract_state.params, run.mesh)


def plan_for(cfg, target, mesh, towers: tuple[str, ...] | None = None) -> Plan:
  """`plan` for a config, the abstract params to load into (ShapeDtypeStructs with shardings) and the mesh;
  `towers` replaces the selection of `cfg.init_from_towers`."""
  source = source_config(cfg)
  towers = towers or selected_towers(cfg, available=target)
  missing = [n for n in towers if n not in target]
  if missing:
    raise config_lib.ConfigError(
        f'config.init_from_towers={cfg.init_from_towers!r} selects {missing} but this model has no such params '
        f'(it has {sorted(target)}; "b" exists with loss.kind=sigmoid or model.b_init set). Drop them.')

  src_model = build_model(source.model)
  src_params = abstract_params(src_model)
  src = {n: src_params[n] for n in towers if n in src_params}
  step_dir = checkpoint_lib.step_dir(cfg.init_from)
  config_file = os.path.join(os.path.abspath(cfg.init_from), config_lib.CONFIG_FILE)
  fix = f'The checkpoint does not match {config_file}; fix that file or write the checkpoint again.'
  # A malformed checkpoint (keys or shapes other than its own config.json implies) is named as such.
  checkpoint_lib.check_param_shapes(checkpoint_lib.stored_param_shapes(step_dir), _shapes(src), step_dir, fix)

  num_prefix = int(cfg.model.image.cls_token)
  grid = _resample_grid(src, target, source, cfg) if 'img' in towers else None
  src_shapes = _shapes(src)
  if grid is not None:
    src_shapes['/'.join(POSEMB)] = tuple(_get(target, POSEMB).shape)
  wanted = _shapes({n: target[n] for n in towers})
  mismatch = _mismatch_fix(source, cfg, towers)
  checkpoint_lib.check_param_shapes(src_shapes, wanted, f'config.init_from={cfg.init_from}', mismatch)
  extra = next((k for k in src_shapes if k not in wanted), None)
  if extra:
    raise config_lib.ConfigError(f'config.init_from={cfg.init_from}: param {extra!r} (shape {src_shapes[extra]}) '
                                 f'of the checkpoint has no counterpart in this model. {mismatch}')

  def restore_target(path, x):
    t = _get(target, tuple(str(getattr(k, 'key', k)) for k in path))
    sh = t.sharding if tuple(t.shape) == tuple(x.shape) else sharding.replicated(mesh)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)

  abstract = jax.tree_util.tree_map_with_path(restore_target, src)
  return Plan(step_dir, abstract, grid, num_prefix, fix)


def load_into_state(run, state, checked: Plan | None = None):
  """Returns `state` with the selected params of `run.config.init_from`, placed with the state's shardings.

  Args:
    run: vitclip.run.Run whose config sets `init_from` (and optionally `init_from_towers`).
    state: a freshly initialised TrainState; params outside the selection keep their init.
    checked: the result of `plan(run)` when already computed.
  """
  checked = checked or plan(run)
  return state.replace(params={**state.params, **load_params(checked, run.abstract_state.params)})


def load_params(checked: Plan, target) -> dict:
  """The params `checked` selects, read from its checkpoint and placed like `target` (the abstract params the
  plan was made for); the image position embedding resampled where the plan says."""
  loaded = checkpoint_lib.restore_params(checked.step_dir, checked.abstract, checked.fix)
  if checked.resample_grid is not None:
    pos = resample_posemb(_get(loaded, POSEMB), checked.num_prefix, checked.resample_grid)
    loaded['img'] = {**loaded['img'], POSEMB[1]: jax.device_put(pos, _get(target, POSEMB).sharding)}
  return loaded


def _resample_grid(src, target, source_cfg, cfg) -> int | None:
  """The target grid side when the learned image position embeddings differ only in their square grid."""
  s, t = _get(src, POSEMB), _get(target, POSEMB)
  if s is None or t is None or s.shape == t.shape or s.shape[2] != t.shape[2]:
    return None  # Absent (sincos2d), equal, or a width mismatch the shape check reports.
  if source_cfg.model.image.cls_token != cfg.model.image.cls_token:
    return None
  n = int(cfg.model.image.cls_token)
  gs, gt = math.isqrt(s.shape[1] - n), math.isqrt(t.shape[1] - n)
  return gt if gs * gs == s.shape[1] - n and gt * gt == t.shape[1] - n else None


def _mismatch_fix(source_cfg, cfg, towers) -> str:
  """What to do about a shape mismatch, naming the model fields that differ between DIR/config.json and this
  run for the selected towers."""
  prefixes = tuple(f'{_SECTIONS[n]}.' for n in towers if n in _SECTIONS)
  relevant = lambda k: k == 'embed_dim' or k.startswith(prefixes) or (k == 'b_init' and 'b' in towers)
  there, here = _flat(source_cfg.model.to_dict()), _flat(cfg.model.to_dict())
  diffs = [f'model.{k} ({there.get(k)!r} there, {v!r} here)' for k, v in here.items()
           if relevant(k) and there.get(k) != v]
  where = os.path.join(os.path.abspath(cfg.init_from), config_lib.CONFIG_FILE)
  differs = f'This run differs from {where} in {", ".join(diffs)}. ' if diffs else ''
  return (f'{differs}Take the model fields from it (--config configs/pretrained.py:{cfg.init_from},shapes), set '
          'them (e.g. --config.model.image.variant=...), or leave the tower out of config.init_from_towers.')


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {f'{prefix}{k}': v})
  return out


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  return {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _get(tree, keys):
  for k in keys:
    if not isinstance(tree, dict) or k not in tree:
      return None
    tree = tree[k]
  return tree
