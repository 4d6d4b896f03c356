"""optax optimizer from the config: warmup + cosine/constant schedule, clipping, AdamW with a decay mask,
layer-wise learning-rate decay, frozen params."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vitclip.errors import ConfigError


def make_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup to `lr`, then cosine decay to `end_lr_fraction * lr` (or constant)."""
  warmup = min(optim_cfg.warmup_steps, max(total_steps - 1, 0))
  if optim_cfg.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim_cfg.lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
        end_value=optim_cfg.lr * optim_cfg.end_lr_fraction)
  if optim_cfg.schedule == 'constant':
    return optax.join_schedules(
        [optax.linear_schedule(0.0, optim_cfg.lr, max(warmup, 1)), optax.constant_schedule(optim_cfg.lr)],
        [warmup])
  raise ValueError(f'config.optim.schedule={optim_cfg.schedule!r} is unknown; use "cosine" or "constant".')


def path_str(path) -> str:
  """Key path -> 'img/encoder/block0/mlp/Dense_0/kernel'."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def decay_mask(params):
  """True for weight matrices (Dense/Conv 'kernel'); norms, biases, embeddings, t and b are not decayed."""
  return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p).endswith('kernel'), params)


def frozen_mask(params, pattern: str):
  """True for params whose path matches the regex `pattern` ('' freezes nothing)."""
  regex = re.compile(pattern) if pattern else None
  return jax.tree_util.tree_map_with_path(lambda p, _: bool(regex and regex.search(path_str(p))), params)


_BLOCK = re.compile(r'(^|/)encoderblock(_(\d+))?/')  # A transformer block's params (stacked when scanned).
# Path parts of the layers before block 0 (patch / token embedding, position embedding, CLS, registers, ln_pre).
_EMBEDDING = ('embedding', 'pos_embedding', 'cls', 'registers', 'stem_', 'ln_pre', 'Embed_')


def layer_decay_scales(params, decay: float, towers=('img', 'txt')):
  """Layer-wise learning-rate decay (BEiT, Bao et al. 2022; ELECTRA): per-param multipliers of the update.

  In a tower with L blocks, block i gets decay^(L - i), the layers before the blocks (patch / token embedding,
  position embedding, CLS) decay^(L + 1), and what follows the blocks (final norm, pooling, projection) 1, as
  does every param outside `towers` (a classifier head, t, b). With scan over layers a block param is stacked
  [L, ...] and gets the multipliers as a [L, 1, ...] array.

  Returns:
    a tree like `params` of float32 arrays broadcastable to each param.
  """
  def depth(tower) -> int:
    indices = {int(m.group(3)) for p, _ in jax.tree_util.tree_leaves_with_path(tower)
               if (m := _BLOCK.search(path_str(p))) and m.group(3) is not None}
    stacked = [x.shape[0] for p, x in jax.tree_util.tree_leaves_with_path(tower)
               if (m := _BLOCK.search(path_str(p))) and m.group(3) is None]
    return max(indices) + 1 if indices else (stacked[0] if stacked else 0)

  depths = {t: depth(params[t]) for t in towers if t in params}

  def scale(path, x):
    name = path_str(path)
    tower = name.split('/', 1)[0]
    if tower not in depths:
      return np.float32(1)
    n = depths[tower]
    block = _BLOCK.search(name)
    if block and block.group(3) is not None:
      return np.float32(decay ** (n - int(block.group(3))))
    if block:  # Stacked blocks [L, ...].
      return (decay ** (n - np.arange(n, dtype=np.float64))).astype(np.float32).reshape((n,) + (1,) * (x.ndim - 1))
    if any(part.startswith(_EMBEDDING) for part in name.split('/')[1:]):
      return np.float32(decay ** (n + 1))
    return np.float32(1)

  return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update by its entry of `scales` (a tree like the params)."""
  return optax.stateless(lambda updates, params=None: jax.tree.map(
      lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales))


def make_optimizer(optim_cfg, total_steps: int, params) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, schedule). `params` (arrays or ShapeDtypeStructs) sets the masks' structure."""
  schedule = make_schedule(optim_cfg, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(optim_cfg.clip_norm) if optim_cfg.clip_norm > 0 else optax.identity(),
      optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                  weight_decay=optim_cfg.weight_decay, mask=decay_mask),
  )
  if optim_cfg.frozen:
    try:
      frozen = frozen_mask(params, optim_cfg.frozen)
    except re.error as e:
      raise ConfigError(f'config.optim.frozen={optim_cfg.frozen!r} is not a regex ({e}); e.g. "^img/".') from None
    if not any(jax.tree.leaves(frozen)):  # A typo would otherwise train everything silently.
      raise ConfigError(f'config.optim.frozen={optim_cfg.frozen!r} matches no parameter path; paths look like '
                        '"img/Transformer/encoderblock_0/..." or "txt/Embed_0/embedding" (LiT: "^img/").')
    labels = jax.tree.map(lambda f: 'frozen' if f else 'train', frozen)
    tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
  if optim_cfg.get('layer_decay', 1.0) != 1.0:  # After AdamW: scales the lr and the decoupled weight decay.
    tx = optax.chain(tx, scale_by_tree(layer_decay_scales(params, optim_cfg.layer_decay)))
  return tx, schedule
