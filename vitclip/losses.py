"""Contrastive losses for two-tower (CLIP / SigLIP) pretraining.

One entry point, `contrastive_loss`, with two losses and three implementations that give the same value and
gradient:

  kind='softmax'  CLIP: w·CE(t·zimg·ztxtᵀ, diag) + (1-w)·CE(t·ztxt·zimgᵀ, diag), mean over the batch.
  kind='sigmoid'  SigLIP: −(1/B) Σ_i Σ_j log σ(z_ij (t·zimg_i·ztxt_j + b)), z_ii = 1, z_ij = −1.

  impl='dense'    the global B×B logit matrix; under jit GSPMD partitions it when the inputs are sharded.
  impl='gather'   shard_map: all-gather the other tower, local rows against all B columns (open_clip's
                  local_loss + gather_with_grad). Per-device memory b×B: grows with the device count.
  impl='ring'     shard_map: each device keeps its image block and text blocks travel around the ring with
                  ppermute (SigLIP §3.3). A custom VJP recomputes every block in the backward pass, so the
                  per-device memory is O(b² + b·D) in forward and backward, independent of the device count.

Notation: B global batch, D embedding width, n devices along the batch axes, b = B / n rows per device.
All arithmetic is in float32 whatever the input dtype; gradients come back in the input dtype.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

KINDS = ('softmax', 'sigmoid')
IMPLS = ('dense', 'gather', 'ring')
# Mesh axis that shards model weights, never the batch; excluded from the default batch axes.
MODEL_AXIS = 'model'


def contrastive_loss(zimg, ztxt, logit_scale, logit_bias=None, *, kind, impl, mesh=None, batch_axes=None,
                     softmax_weight=0.5):
  """Mean contrastive loss over a global batch of image/text embedding pairs.

  Args:
    zimg: [B, D] image embeddings, L2-normalized, any float dtype. With a mesh: a global array sharded over
      `batch_axes` along B (replicated along every other mesh axis).
    ztxt: [B, D] text embeddings, same layout; row i is the positive for zimg row i.
    logit_scale: scalar t, the logit multiplier (already exponentiated, e.g. 1/0.07 or 10).
    logit_bias: scalar b (sigmoid only; None means 0). A softmax is invariant to a shift shared by all logits,
      so for kind='softmax' the bias is ignored and its gradient is zero.
    kind: 'softmax' (CLIP) or 'sigmoid' (SigLIP).
    impl: 'dense', 'gather' or 'ring' (see the module docstring). 'gather' and 'ring' need `mesh`.
    mesh: jax.sharding.Mesh the batch is sharded over.
    batch_axes: mesh axis names (str or tuple) that shard the batch; default every axis except 'model'. The
      ring runs over the flattened index of these axes.
    softmax_weight: w in [0, 1], the weight of the image→text direction (0.5: symmetric CLIP loss).

  Returns:
    [] float32 scalar, the loss averaged over the B pairs.
  """
  _check_args(zimg, ztxt, kind, impl, mesh, softmax_weight)
  t = _as_scalar(logit_scale, 'logit_scale')
  b = jnp.zeros((), jnp.float32) if logit_bias is None else _as_scalar(logit_bias, 'logit_bias')
  if impl == 'dense':
    return _dense_loss(zimg, ztxt, t, b, kind, softmax_weight)
  axes = _batch_axes(mesh, batch_axes)
  n = math.prod(mesh.shape[a] for a in axes)
  if zimg.shape[0] % n:
    raise ValueError(f'contrastive_loss(impl={impl!r}): global batch {zimg.shape[0]} is not divisible by the '
                     f'{n} devices of the batch axes {axes}; use a batch that is a multiple of {n}.')
  spec = _Spec(kind=kind, weight=float(softmax_weight), axes=axes, n=n, batch=zimg.shape[0])
  local_fn = functools.partial(_gather_local if impl == 'gather' else _ring_local, spec)
  row = P(axes, None)
  sharded = jax.shard_map(local_fn, mesh=mesh, in_specs=(row, row, P(), P()), out_specs=P())
  return sharded(zimg, ztxt, t, b)


# ------------------------------------------------------------------------------------------------ validation


def _check_args(zimg, ztxt, kind, impl, mesh, softmax_weight):
  if kind not in KINDS:
    raise ValueError(f'contrastive_loss: unknown kind={kind!r}; use one of {KINDS}.')
  if impl not in IMPLS:
    raise ValueError(f'contrastive_loss: unknown impl={impl!r}; use one of {IMPLS}.')
  if impl != 'dense' and mesh is None:
    raise ValueError(f'contrastive_loss: impl={impl!r} runs under shard_map and needs mesh=; pass the '
                     "jax.sharding.Mesh the batch is sharded over, or use impl='dense'.")
  if zimg.ndim != 2 or zimg.shape != ztxt.shape:
    raise ValueError(f'contrastive_loss: zimg {zimg.shape} and ztxt {ztxt.shape} must both be [B, D] with the '
                     'same shape; pass the projected, L2-normalized embeddings of matching pairs.')
  if not 0.0 <= softmax_weight <= 1.0:
    raise ValueError(f'contrastive_loss: softmax_weight={softmax_weight} is outside [0, 1]; '
                     'use 0.5 for the symmetric CLIP loss.')


def _batch_axes(mesh, batch_axes):
  """Normalizes `batch_axes` to a non-empty tuple of axis names of `mesh`."""
  if batch_axes is None:
    axes = tuple(a for a in mesh.axis_names if a != MODEL_AXIS)
  else:
    axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
  unknown = [a for a in axes if a not in mesh.axis_names]
  if unknown or not axes:
    raise ValueError(f'contrastive_loss: batch_axes={batch_axes!r} must name axes of the mesh '
                     f'{tuple(mesh.axis_names)}; pass the axes the batch dimension is sharded over.')
  return axes


def _as_scalar(x, name):
  x = jnp.asarray(x)
  if x.size != 1:
    raise ValueError(f'contrastive_loss: {name} must be a scalar, got shape {x.shape}; pass a 0-d array.')
  return x.reshape(()).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class _Spec:
  """Static configuration of a sharded loss (hashable: a nondiff argument of the custom VJP)."""
  kind: str
  weight: float  # softmax_weight w
  axes: tuple  # batch mesh axes
  n: int  # devices along `axes`
  batch: int  # global batch B


# ------------------------------------------------------------------------------------------------ dense


def _dense_loss(zimg, ztxt, t, b, kind, weight):
  """Plain global computation. zimg, ztxt: [B, D]; t, b: [] float32. Returns [] float32."""
  zimg, ztxt = zimg.astype(jnp.float32), ztxt.astype(jnp.float32)
  logits = t * (zimg @ ztxt.T)  # [B, B]
  diag = jnp.diagonal(logits)
  if kind == 'softmax':
    i2t = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
    t2i = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag)
    return weight * i2t + (1.0 - weight) * t2i
  labels = 2.0 * jnp.eye(logits.shape[0], dtype=jnp.float32) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(labels * (logits + b))) / logits.shape[0]


# ------------------------------------------------------------------------------------------------ gather


def _gather_local(spec, zimg, ztxt, t, b):
  """Per-device body of impl='gather'. zimg, ztxt: [b, D] local rows; t, b: []. Returns [] (global mean).

  Autodiff transposes all_gather into a reduce-scatter, so each device gets the gradient of its own rows.
  """
  zimg, ztxt = zimg.astype(jnp.float32), ztxt.astype(jnp.float32)
  rows = zimg.shape[0]
  # Column of each local row's positive in the gathered [b, B] matrix.
  pos = lax.axis_index(spec.axes) * rows + jnp.arange(rows)
  diag = t * jnp.sum(zimg * ztxt, axis=1)  # [b]
  all_txt = lax.all_gather(ztxt, spec.axes, tiled=True)  # [B, D]
  i2t = t * (zimg @ all_txt.T)  # [b, B]
  if spec.kind == 'softmax':
    all_img = lax.all_gather(zimg, spec.axes, tiled=True)
    t2i = t * (ztxt @ all_img.T)  # [b, B]
    local = (spec.weight * jnp.sum(jax.nn.logsumexp(i2t, axis=1) - diag)
             + (1.0 - spec.weight) * jnp.sum(jax.nn.logsumexp(t2i, axis=1) - diag))
  else:
    labels = jnp.where(jnp.arange(spec.batch)[None, :] == pos[:, None], 1.0, -1.0)
    local = -jnp.sum(jax.nn.log_sigmoid(labels * (i2t + b)))
  return lax.psum(local, spec.axes) / spec.batch


# ------------------------------------------------------------------------------------------------ ring
#
# Device k holds image rows k and text rows k. Text blocks move one step along the ring per iteration
# (k → k+1), so at step s device k sees text block k−s; step 0 is the diagonal block, the only one holding
# positives. Quantities that belong to a text block (its column log-sum-exp, its gradient) travel with the
# block and take one last hop home after the loop.
#
# Why a custom VJP: differentiating the loop with autodiff stores the b×b logits of every step (n of them)
# for the backward pass, i.e. b×B per device: the memory growth of open_clip's SigLipLoss. The backward pass
# here runs the ring again and recomputes each block from the embeddings; the residuals are the local
# embeddings and two [b] log-sum-exp vectors.


def _ring_local(spec, zimg, ztxt, t, b):
  """Per-device body of impl='ring'. zimg, ztxt: [b, D] local rows; t, b: []. Returns [] (global mean)."""
  # The custom VJP sees varying t and b, so its scalar cotangents are per-device partial sums; the transpose
  # of the cast to varying is the psum over the batch axes.
  t, b = _to_varying(t, spec.axes), _to_varying(b, spec.axes)
  # Upcasting outside the custom VJP lets autodiff cast the cotangents back to the input dtype.
  return _ring_loss(spec, zimg.astype(jnp.float32), ztxt.astype(jnp.float32), t, b)


def _to_varying(x, axes):
  if hasattr(lax, 'pcast'):
    return lax.pcast(x, axes, to='varying')
  if hasattr(lax, 'pvary'):  # jax < 0.8
    return lax.pvary(x, axes)
  return x


def _shift(tree, spec):
  """Sends every array in `tree` one step along the ring: device k → k+1 (flattened batch-axes index)."""
  perm = [(i, (i + 1) % spec.n) for i in range(spec.n)]
  return jax.tree.map(lambda x: lax.ppermute(x, spec.axes, perm), tree)


def _ring_scan(spec, block_fn, carry, travel):
  """Runs `block_fn(carry, travel, diagonal)` on all n blocks, moving `travel` one hop between blocks.

  The diagonal block runs outside the loop, so the loop body never needs positives and every loop carry is
  already device-varying when the loop starts. Returns the final (carry, travel); `travel` ends one hop
  short of home.
  """
  carry, travel = block_fn(carry, travel, True)

  def body(_, state):
    carry, travel = state
    return block_fn(carry, _shift(travel, spec), False)

  return lax.fori_loop(1, spec.n, body, (carry, travel))


def _ring_forward(spec, zimg, ztxt, t, b):
  """Returns (per-device partial loss sum [], row lse [b], column lse of the local text block [b])."""
  def block(carry, travel, diagonal):
    total, row_lse = carry
    txt, col_lse = travel
    logits = t * (zimg @ txt.T)  # [b, b]: local images × visiting texts
    if spec.kind == 'softmax':
      row_lse = _logaddexp_opt(row_lse, jax.nn.logsumexp(logits, axis=1))
      col_lse = _logaddexp_opt(col_lse, jax.nn.logsumexp(logits, axis=0))
      if diagonal:
        total = total - jnp.sum(jnp.diagonal(logits))
    else:
      labels = 2.0 * jnp.eye(logits.shape[0], dtype=jnp.float32) - 1.0 if diagonal else -1.0
      total = total - jnp.sum(jax.nn.log_sigmoid(labels * (logits + b)))
    return (total, row_lse), (txt, col_lse)

  (total, row_lse), (_, col_lse) = _ring_scan(spec, block, (jnp.zeros((), jnp.float32), None), (ztxt, None))
  if spec.kind == 'softmax':
    col_lse = _shift(col_lse, spec)  # home
    total = total + spec.weight * jnp.sum(row_lse) + (1.0 - spec.weight) * jnp.sum(col_lse)
  return total, row_lse, col_lse


def _logaddexp_opt(acc, x):
  """Online log-sum-exp; `acc` is None before the first block (no -inf init, so no invariant carry)."""
  return x if acc is None else jnp.logaddexp(acc, x)


def _ring_backward(spec, res, g):
  """Gradients of g·(partial loss sum) by a second trip around the ring, recomputing each block."""
  zimg, ztxt, t, b, row_lse, col_lse = res
  w = spec.weight

  def block(carry, travel, diagonal):
    dimg, dt, db = carry
    txt, txt_col_lse, dtxt = travel
    sims = zimg @ txt.T  # [b, b]
    logits = t * sims
    # dloss/dlogits for this block.
    if spec.kind == 'softmax':
      glog = (w * jnp.exp(logits - row_lse[:, None]) + (1.0 - w) * jnp.exp(logits - txt_col_lse[None, :]))
    else:
      glog = jax.nn.sigmoid(logits + b)
    if diagonal:  # positives: −1 per pair in both kinds (softmax: −diag; sigmoid: σ(x) − 1 = −σ(−x)).
      glog = glog - jnp.eye(glog.shape[0], dtype=glog.dtype)
    glog = g * glog
    dimg = dimg + t * (glog @ txt)
    dtxt = t * (glog.T @ zimg) if dtxt is None else dtxt + t * (glog.T @ zimg)
    dt = dt + jnp.sum(glog * sims)
    db = db + jnp.sum(glog)
    return (dimg, dt, db), (txt, txt_col_lse, dtxt)

  zero = jnp.zeros((), jnp.float32)
  carry = (jnp.zeros_like(zimg), zero, zero)
  (dimg, dt, db), (_, _, dtxt) = _ring_scan(spec, block, carry, (ztxt, col_lse, None))
  dtxt = _shift(dtxt, spec)  # home
  if spec.kind == 'softmax':
    db = jnp.zeros_like(db)  # the shared shift cancels in a softmax
  return dimg, dtxt, dt, db


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring_loss(spec, zimg, ztxt, t, b):
  return _ring_fwd(spec, zimg, ztxt, t, b)[0]


def _ring_fwd(spec, zimg, ztxt, t, b):
  total, row_lse, col_lse = _ring_forward(spec, zimg, ztxt, t, b)
  loss = lax.psum(total, spec.axes) / spec.batch
  return loss, (zimg, ztxt, t, b, row_lse, col_lse)


def _ring_bwd(spec, res, g):
  # loss = psum(total) / B: every device's partial sum receives the cotangent g / B.
  return _ring_backward(spec, res, g / spec.batch)


_ring_loss.defvjp(_ring_fwd, _ring_bwd)
