"""Gradient caching (Gao et al. 2021, "GradCache"): full-batch contrastive gradients at microbatch memory.

1. Embed the global batch microbatch by microbatch, keeping only the embeddings [B, D].
2. Loss and its gradient w.r.t. all embeddings (and t, b) over the FULL batch: every negative stays.
3. Re-run each microbatch forward with `jax.vjp` and pull the cached embedding gradients back to the params;
   sum over microbatches.
The parameter gradient equals the full-batch gradient; activation memory is set by the microbatch. Naive
gradient accumulation would instead shrink the set of negatives to the microbatch.

Microbatch k takes the k-th slice of *every device's* local rows, so each microbatch stays spread over all
devices and splitting/merging the batch is a per-device reshape (no communication).
"""

import math

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from vitclip import sharding, train_step as train_step_lib


def _logit_params(params):
  """t (multiplier) and b from the params: the two-tower model stores log t in params['t']."""
  return jnp.exp(params['t']), params.get('b')


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


def make_loss_and_grad(model, config, mesh):
  """`(params, batch) -> ((loss, extras), grads)` with gradient caching, or None when it is off."""
  micro = config.grad_cache.microbatch
  if not micro or micro >= config.batch_size:
    return None
  n = config.batch_size // micro
  parallel = math.prod(mesh.shape[a] for a in sharding.batch_axes(mesh))
  loss_fn = train_step_lib.loss_fn_from_config(config, mesh)

  def embed(params, images, tokens):
    zimg, ztxt, _ = model.apply({'params': params}, images, tokens)
    return zimg, ztxt

  def loss_and_grad(params, batch):
    images, tokens = (_split(batch[k], parallel, n, mesh) for k in ('image', 'tokens'))
    # 1. Embeddings only; nothing here is differentiated, so no activations are kept.
    zimg, ztxt = jax.lax.map(lambda xs: embed(params, *xs), (images, tokens))
    zimg, ztxt = _merge(zimg, parallel, mesh), _merge(ztxt, parallel, mesh)

    # 2. Full-batch loss; gradient w.r.t. embeddings and the params that enter the loss directly (t, b).
    def full_loss(zi, zt, p):
      t, b = _logit_params(p)
      return loss_fn(zi, zt, t, b)
    loss, (g_img, g_txt, g_params) = jax.value_and_grad(full_loss, argnums=(0, 1, 2))(zimg, ztxt, params)
    g_img, g_txt = _split(g_img, parallel, n, mesh), _split(g_txt, parallel, n, mesh)

    # 3. Backprop each microbatch with its slice of the cached embedding gradients; sum.
    def accumulate(acc, xs):
      img, tok, gi, gt = xs
      _, pullback = jax.vjp(lambda p: embed(p, img, tok), params)
      (g,) = pullback((gi, gt))
      return jax.tree.map(jnp.add, acc, g), None
    grads, _ = jax.lax.scan(accumulate, g_params, (images, tokens, g_img, g_txt))
    t, b = _logit_params(params)
    return (loss, {'t': t} if b is None else {'t': t, 'b': b}), grads

  return loss_and_grad
