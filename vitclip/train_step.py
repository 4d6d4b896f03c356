"""Train state and the pure train step: state, batch -> state, metrics.

The gradient is the value_and_grad of the full-batch forward, or, with `config.grad_cache.microbatch` set,
gradient caching (Gao et al. 2021, "GradCache"): full-batch contrastive gradients at microbatch memory.

1. Embed the global batch microbatch by microbatch, keeping only the embeddings [B, D].
2. Loss and its gradient w.r.t. all embeddings (and t, b) over the FULL batch: every negative stays.
3. Re-run each microbatch forward with `jax.vjp` and pull the cached embedding gradients back to the params;
   sum over microbatches.
The parameter gradient equals the full-batch gradient; activation memory is set by the microbatch. Naive
gradient accumulation would instead shrink the set of negatives to the microbatch.

Microbatch k takes the k-th slice of *every device's* local rows, so each microbatch stays spread over all
devices and splitting/merging the batch is a per-device reshape (no communication).

Image token masking: with `config.flip.mask_ratio` each image keeps a random subset of its patch tokens (FLIP;
the last `flip.unmasked_steps` steps keep all); with `config.aclip.enabled` the step is A-CLIP's objective
(vitclip/aclip.py), and the EMA image tower in `TrainState.ema` follows the params after each update. The masks
come from the step key fold_in(state.rng, state.step): a resumed run draws the same ones.

Classifier fine-tuning (`config.classifier.enabled`): the batch holds labels instead of tokens and the objective is
cross-entropy of the image tower's head (vitclip/classifier.py).

A step whose loss, gradient, update or new params are not finite is not applied (params and optimizer state
stay as they were; the step counter advances) and reports `skipped_nonfinite = 1`; the trainer stops a run
after `config.max_skipped_steps` such steps in a row.
"""

import functools
import math
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from vitclip import aclip, classifier, losses, masking, sharding
from vitclip.data.pipeline import ImageSpec
from vitclip.models import clamp_logit_scale, logit_params


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates applied.
  params: Any
  opt_state: Any
  rng: jax.Array  # Base key; step keys are fold_in(rng, step) so resumption replays the same randomness.
  ema: Any = None  # A-CLIP: the EMA of params['img']; None otherwise.


def step_key(state: TrainState) -> jax.Array:
  """The randomness of step `state.step` (token masks, A-CLIP's views)."""
  return jax.random.fold_in(state.rng, state.step)


def loss_fn_from_config(config, mesh) -> Callable:
  """(zimg [B, D], ztxt [B, D], t, b) -> scalar loss, as configured."""
  return functools.partial(losses.contrastive_loss, kind=config.loss.kind, impl=config.loss.impl, mesh=mesh,
                           softmax_weight=config.loss.softmax_weight)


def global_norm(tree) -> jax.Array:
  norm = getattr(getattr(optax, 'tree', None), 'norm', None) or optax.global_norm  # optax.tree: >= 0.2.5
  return norm(tree)


def all_finite(tree) -> jax.Array:
  """bool scalar: every float in `tree` is finite (and below ~1e19, where a square overflows): one fused norm,
  which compiles far faster than a reduction per leaf."""
  floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.isfinite(global_norm(floats))


# ------------------------------------------------------------------------------------------- gradients


def full_batch_loss_and_grad(model, loss_fn, to_model: Callable = lambda x: x) -> Callable:
  """`(params, batch, keep) -> (loss, grads)`: value_and_grad of the full-batch forward; keep: None or the image
  tokens to keep, int [B, K]; to_model: the batch's images -> the model's input (`ImageSpec.to_model`)."""
  def loss(params, batch, keep):
    zimg, ztxt, _ = model.apply({'params': params}, to_model(batch['image']), batch['tokens'], keep=keep)
    return loss_fn(zimg, ztxt, *logit_params(params))
  return jax.value_and_grad(loss)


def _split(x, parallel: int, n: int, mesh):
  """[B, ...] -> [n, B/n, ...]; microbatch k holds rows k*m/P:(k+1)*m/P of each device's block."""
  b = x.shape[0]
  y = x.reshape(parallel, n, b // (parallel * n), *x.shape[1:]).swapaxes(0, 1).reshape(n, b // n, *x.shape[1:])
  spec = P(None, sharding.batch_axes(mesh), *([None] * (x.ndim - 1)))
  return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))


def _merge(y, parallel: int, mesh):
  """Inverse of `_split`: [n, m, ...] -> [n*m, ...] in the original row order."""
  n, m = y.shape[:2]
  x = y.reshape(n, parallel, m // parallel, *y.shape[2:]).swapaxes(0, 1).reshape(n * m, *y.shape[2:])
  return jax.lax.with_sharding_constraint(x, sharding.batch_sharding(mesh))


def grad_cache_loss_and_grad(model, loss_fn, mesh, batch_size: int, microbatch: int,
                             to_model: Callable = lambda x: x) -> Callable:
  """`(params, batch, keep) -> (loss, grads)` by gradient caching (module docstring), equal to the full-batch
  one. Images become model inputs (`to_model`) microbatch by microbatch: a float copy of the whole batch never
  exists."""
  n = batch_size // microbatch
  parallel = math.prod(mesh.shape[a] for a in sharding.batch_axes(mesh))

  def embed(params, images, tokens, keep):
    zimg, ztxt, _ = model.apply({'params': params}, to_model(images), tokens, keep=keep)
    return zimg, ztxt

  def loss_and_grad(params, batch, keep):
    images, tokens = (_split(batch[k], parallel, n, mesh) for k in ('image', 'tokens'))
    keep = None if keep is None else _split(keep, parallel, n, mesh)  # Each microbatch keeps its own rows' masks.
    # 1. Embeddings only; nothing here is differentiated, so no activations are kept.
    zimg, ztxt = jax.lax.map(lambda xs: embed(params, *xs), (images, tokens, keep))
    zimg, ztxt = _merge(zimg, parallel, mesh), _merge(ztxt, parallel, mesh)

    # 2. Full-batch loss; gradient w.r.t. embeddings and the params that enter the loss directly (t, b).
    def full_loss(zi, zt, p):
      return loss_fn(zi, zt, *logit_params(p))
    loss, (g_img, g_txt, g_params) = jax.value_and_grad(full_loss, argnums=(0, 1, 2))(zimg, ztxt, params)
    g_img, g_txt = _split(g_img, parallel, n, mesh), _split(g_txt, parallel, n, mesh)

    # 3. Backprop each microbatch with its slice of the cached embedding gradients; sum.
    def accumulate(acc, xs):
      img, tok, kept, gi, gt = xs
      _, pullback = jax.vjp(lambda p: embed(p, img, tok, kept), params)
      (g,) = pullback((gi, gt))
      return jax.tree.map(jnp.add, acc, g), None
    grads, _ = jax.lax.scan(accumulate, g_params, (images, tokens, keep, g_img, g_txt))
    return loss, grads

  return loss_and_grad


def make_loss_and_grad(model, config, mesh) -> Callable:
  """`(state, batch) -> (loss, grads, terms)` as configured; terms: a dict of extra scalars to log.

  Cross-entropy on labels when `config.classifier.enabled` (vitclip/classifier.py); A-CLIP's objective when
  `config.aclip.enabled`; otherwise gradient caching when `config.grad_cache.microbatch`
  is set and smaller than the batch, else the plain full-batch gradient, either with FLIP's random token masks
  when `config.flip.mask_ratio` > 0 (all tokens from step total_steps - flip.unmasked_steps on).
  """
  to_model = ImageSpec.from_config(config, train=True).to_model  # uint8 pixels -> normalised float32.
  with_float_images = lambda batch: {**batch, 'image': to_model(batch['image'])}
  if config.classifier.enabled:
    objective = jax.value_and_grad(classifier.loss_fn(model, config.classifier.label_smoothing), has_aux=True)

    def classifier_loss_and_grad(state, batch):
      (loss, terms), grads = objective(state.params, with_float_images(batch))
      return loss, grads, terms
    return classifier_loss_and_grad

  loss_fn = loss_fn_from_config(config, mesh)
  if config.aclip.enabled:
    objective = jax.value_and_grad(aclip.loss_terms(model, config, mesh, loss_fn), has_aux=True)

    def aclip_loss_and_grad(state, batch):
      (loss, terms), grads = objective(state.params, state.ema, with_float_images(batch), step_key(state))
      return loss, grads, terms
    return aclip_loss_and_grad

  micro = config.grad_cache.microbatch
  if micro and micro < config.batch_size:
    loss_and_grad = grad_cache_loss_and_grad(model, loss_fn, mesh, config.batch_size, micro, to_model)
  else:
    loss_and_grad = full_batch_loss_and_grad(model, loss_fn, to_model)
  ratio, unmasked = config.flip.mask_ratio, config.flip.unmasked_steps
  if not ratio:
    return lambda state, batch: (*loss_and_grad(state.params, batch, None), {})
  num_tokens = aclip.patch_grid(model)**2

  def flip_loss_and_grad(state, batch):
    def masked():
      keep = masking.random_keep(step_key(state), batch['image'].shape[0], num_tokens, ratio)
      return loss_and_grad(state.params, batch, keep)
    if not unmasked:
      return (*masked(), {})
    # Both branches are compiled into the step; only the one taken runs.
    full = lambda: loss_and_grad(state.params, batch, None)
    return (*jax.lax.cond(state.step < config.total_steps - unmasked, masked, full), {})
  return flip_loss_and_grad


# ------------------------------------------------------------------------------------------------ step


def make_train_step(model, tx: optax.GradientTransformation, schedule, config, mesh) -> Callable:
  """Builds `train_step(state, batch) -> (state, metrics)`: one optimizer update with the configured loss.

  A non-finite loss, gradient, update or new param skips the update (module docstring).
  """
  loss_and_grad = make_loss_and_grad(model, config, mesh)
  t_max = config.model.t_max

  def train_step(state: TrainState, batch):
    loss, grads, terms = loss_and_grad(state, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = clamp_logit_scale(optax.apply_updates(state.params, updates), t_max)
    grad_norm, update_norm, param_norm = global_norm(grads), global_norm(updates), global_norm(params)
    # A norm is finite only if every element is (and none is beyond ~1e19, where its square overflows).
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
              & jnp.isfinite(param_norm))  # As `all_finite`, reusing the norms the metrics report anyway.
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                              opt_state=keep(opt_state, state.opt_state))
    if state.ema is not None:
      momentum = aclip.ema_momentum(config.aclip, state.step, config.total_steps)
      new_state = new_state.replace(ema=aclip.update_ema(state.ema, new_state.params['img'], momentum))
      terms = {**terms, 'ema_momentum': momentum}
    t, b = logit_params(state.params)
    metrics = {
        'loss': loss, 'lr': schedule(state.step), 't': t,
        'grad_norm': grad_norm, 'param_norm': param_norm, 'update_norm': update_norm,
        'skipped_nonfinite': 1 - finite.astype(jnp.int32), **terms,
    }
    if b is not None:
      metrics['b'] = b
    return new_state, metrics

  return train_step
