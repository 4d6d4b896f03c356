"""optax optimizer from the config: warmup + cosine/constant schedule, clipping, AdamW with a decay mask."""

import re

import jax
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
  return tx, schedule
