"""Train state and the pure train step: state, batch -> state, metrics."""

import functools
import math
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from vitclip import losses


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates applied.
  params: Any
  opt_state: Any
  rng: jax.Array  # Base key; step keys are fold_in(rng, step) so resumption replays the same randomness.


def loss_fn_from_config(config, mesh) -> Callable:
  """(zimg [B, D], ztxt [B, D], t, b) -> scalar loss, as configured."""
  return functools.partial(losses.contrastive_loss, kind=config.loss.kind, impl=config.loss.impl, mesh=mesh,
                           softmax_weight=config.loss.softmax_weight)


def embed_and_loss(model, loss_fn, params, batch):
  """Full-batch forward: embeddings of both towers and the contrastive loss. Returns (loss, extras)."""
  zimg, ztxt, extras = model.apply({'params': params}, batch['image'], batch['tokens'])
  loss = loss_fn(zimg, ztxt, extras['t'], extras.get('b'))
  return loss, extras


def clamp_logit_scale(params, t_max: float):
  """CLIP clamps t = exp(params['t']) to <= t_max after every update (t_max <= 0: no clamp)."""
  if t_max <= 0:
    return params
  return {**params, 't': jnp.minimum(params['t'], math.log(t_max))}


def global_norm(tree) -> jax.Array:
  norm = getattr(getattr(optax, 'tree', None), 'norm', None) or optax.global_norm  # optax.tree: >= 0.2.5
  return norm(tree)


def make_train_step(model, tx: optax.GradientTransformation, schedule, config, mesh,
                    loss_and_grad: Callable | None = None) -> Callable:
  """Builds `train_step(state, batch) -> (state, metrics)`.

  Args:
    loss_and_grad: optional `(params, batch) -> ((loss, extras), grads)`; default is value_and_grad of the
      full-batch forward. Gradient caching plugs in here (see vitclip/grad_cache.py).
  Non-finite losses or gradients skip the update (the step counter still advances) and are reported.
  """
  loss_fn = loss_fn_from_config(config, mesh)
  if loss_and_grad is None:
    loss_and_grad = jax.value_and_grad(functools.partial(embed_and_loss, model, loss_fn), has_aux=True)
  t_max = config.model.t_max

  def train_step(state: TrainState, batch):
    (loss, extras), grads = loss_and_grad(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = clamp_logit_scale(optax.apply_updates(state.params, updates), t_max)
    grad_norm = global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                              opt_state=keep(opt_state, state.opt_state))
    metrics = {
        'loss': loss, 'lr': schedule(state.step), 't': extras['t'],
        'grad_norm': grad_norm, 'param_norm': global_norm(state.params), 'update_norm': global_norm(updates),
        'skipped_nonfinite': 1 - finite.astype(jnp.int32),
    }
    if extras.get('b') is not None:
      metrics['b'] = extras['b']
    return new_state, metrics

  return train_step
