"""Contrastive losses for two-tower (CLIP / SigLIP) pretraining.

One entry point, `contrastive_loss`, with the loss kinds of the table `KINDS` and three implementations that
give the same value and gradient.

Every kind is a sum of terms of the global B×B logit matrix L = t·zimg·ztxtᵀ, whose diagonal holds the
matching pairs:

  loss = (1/B) [Σ_i positive(L_ii, b) + Σ_{i≠j} negative(L_ij, b) + stat_loss(r, c, w)],
  r_i = stat_j L_ij (row statistics),  c_j = stat_i L_ij (column statistics).

`positive` and `negative` are elementwise; `stat` is a reduction whose partial results merge by the same
reduction, so a statistic is accumulated block by block. Given the statistics of the whole batch, the gradient
of any logit needs only its own block:

  B·∂loss/∂L_ij = [i=j]·positive'(L_ij) + [i≠j]·negative'(L_ij)
                  + ∂stat_loss/∂r_i · stat_grad(L_ij, r_i) + ∂stat_loss/∂c_j · stat_grad(L_ij, c_j),

with stat_grad(L_ij, r_i) = ∂r_i/∂L_ij. The kinds:

  'softmax'  CLIP: w·CE(L, diag) + (1−w)·CE(Lᵀ, diag). positive = −L, no negative terms, stat = log-sum-exp,
             stat_grad = exp(L_ij − r_i) (the softmax), stat_loss = w·Σ_i r_i + (1−w)·Σ_j c_j. A softmax is
             invariant to a shift shared by all logits: b is ignored and its gradient is exactly zero.
  'sigmoid'  SigLIP: −(1/B) Σ_ij log σ(z_ij (L_ij + b)), z_ii = 1, z_ij = −1. positive = softplus(−(L + b)),
             negative = softplus(L + b), no statistics.

The implementations are three schedules over the same block functions:

  impl='dense'    one block, the global B×B matrix, differentiated by autodiff. Memory B×B; under jit GSPMD
                  partitions it when the inputs are sharded.
  impl='gather'   shard_map: all-gather the text tower, one [b, B] block of local image rows against all B
                  columns (open_clip's local_loss + gather_with_grad), autodiff. Row statistics are complete
                  on the device; each device's partial column statistics reach the device owning the column by
                  one all_to_all ([B] numbers). Per-device memory b×B: grows with the device count.
  impl='ring'     shard_map: each device keeps its image block and text blocks travel around the ring with
                  ppermute (SigLIP §3.3), n blocks of b×b. A custom VJP recomputes every block in the backward
                  pass, so the per-device memory is O(b² + b·D) in forward and backward, independent of the
                  device count.

Adding a kind: one `LossKind` record in `KINDS` (its terms and its logit scale / bias defaults).
Every implementation, config validation and default, the memory benchmark and the tests read the table.

Notation: B global batch, D embedding width, n devices along the batch axes, b = B / n rows per device.
All arithmetic is in float32 whatever the input dtype; gradients come back in the input dtype.
"""

from collections.abc import Callable
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class LossKind:
  """One contrastive loss: its terms (see the module docstring) and the model defaults that go with it.

  Logits come in blocks of r image rows × c text columns. eq=False: records hash by identity, so a record can
  sit in the static arguments of jit and custom_vjp.

  Attributes:
    positive: (logits, bias []) -> the loss of each matching pair, elementwise (logits: [r]).
    negative: None (no terms), or (logits, bias []) -> the loss of each non-matching pair, elementwise.
    stat: None (no statistics), or (logits [r, c], axis) -> the block's partial statistic of each row (axis=1,
      [r]) or column (axis=0, [c]). Partials merge by the same function: stat(stack([s1, s2]), 0).
    stat_grad: (logits [r, c], stat [r, 1] or [1, c]) -> [r, c], ∂stat/∂logits given the complete statistic.
    stat_loss: (row [r], col [c], weight) -> [], the sum of the per-row and per-column terms given complete
      statistics; weight is softmax_weight.
    init: model defaults read by vitclip.config: {'t_init': initial logit scale t, 'b_init': initial bias b
      (None: the model has no bias), 't_max': clamp of t after each update (0: none)}.
  """
  positive: Callable
  init: dict
  negative: Callable | None = None
  stat: Callable | None = None
  stat_grad: Callable | None = None
  stat_loss: Callable | None = None

  def __post_init__(self):
    given = [f is not None for f in (self.stat, self.stat_grad, self.stat_loss)]
    if any(given) and not all(given):
      raise ValueError('LossKind: stat, stat_grad and stat_loss describe one statistic; give all three or none.')


def _softmax_positive(logits, bias):
  del bias  # A shift shared by all logits cancels in a softmax.
  return -logits


def _softmax_stat_grad(logits, lse):
  return jnp.exp(logits - lse)


def _softmax_stat_loss(row_lse, col_lse, weight):
  return weight * jnp.sum(row_lse) + (1.0 - weight) * jnp.sum(col_lse)


def _sigmoid_positive(logits, bias):
  return jax.nn.softplus(-(logits + bias))  # −log σ(x) = softplus(−x)


def _sigmoid_negative(logits, bias):
  return jax.nn.softplus(logits + bias)


# Defaults: CLIP (Radford et al. 2021) and SigLIP (Zhai et al. 2023).
KINDS: dict[str, LossKind] = {
    'softmax': LossKind(positive=_softmax_positive, stat=jax.nn.logsumexp, stat_grad=_softmax_stat_grad,
                        stat_loss=_softmax_stat_loss, init={'t_init': 1 / 0.07, 'b_init': None, 't_max': 100.0}),
    'sigmoid': LossKind(positive=_sigmoid_positive, negative=_sigmoid_negative,
                        init={'t_init': 10.0, 'b_init': -10.0, 't_max': 0.0}),
}
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
    logit_bias: scalar b (None means 0). A softmax is invariant to a shift shared by all logits, so for
      kind='softmax' the bias is ignored and its gradient is zero.
    kind: a key of `KINDS`: 'softmax' (CLIP) or 'sigmoid' (SigLIP).
    impl: 'dense', 'gather' or 'ring' (see the module docstring). 'gather' and 'ring' need `mesh`.
    mesh: jax.sharding.Mesh the batch is sharded over.
    batch_axes: mesh axis names (str or tuple) that shard the batch; default every axis except 'model'. The
      ring runs over the flattened index of these axes.
    softmax_weight: w in [0, 1], the weight of the image→text direction (0.5: symmetric CLIP loss).

  Returns:
    [] float32 scalar, the loss averaged over the B pairs.
  """
  _check_args(zimg, ztxt, kind, impl, mesh, softmax_weight)
  record = KINDS[kind]
  t = _as_scalar(logit_scale, 'logit_scale')
  b = jnp.zeros((), jnp.float32) if logit_bias is None else _as_scalar(logit_bias, 'logit_bias')
  if impl == 'dense':
    return _dense_loss(zimg, ztxt, t, b, record, softmax_weight)
  axes = _batch_axes(mesh, batch_axes)
  n = math.prod(mesh.shape[a] for a in axes)
  if zimg.shape[0] % n:
    raise ValueError(f'contrastive_loss(impl={impl!r}): global batch {zimg.shape[0]} is not divisible by the '
                     f'{n} devices of the batch axes {axes}; use a batch that is a multiple of {n}.')
  spec = _Spec(kind=record, weight=float(softmax_weight), axes=axes, n=n, batch=zimg.shape[0])
  local_fn = functools.partial(_gather_local if impl == 'gather' else _ring_local, spec)
  row = P(axes, None)
  sharded = jax.shard_map(local_fn, mesh=mesh, in_specs=(row, row, P(), P()), out_specs=P())
  return sharded(zimg, ztxt, t, b)


# ------------------------------------------------------------------------------------------------ validation


def _check_args(zimg, ztxt, kind, impl, mesh, softmax_weight):
  if kind not in KINDS:
    raise ValueError(f'contrastive_loss: unknown kind={kind!r}; use one of {tuple(KINDS)}.')
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
  kind: LossKind
  weight: float  # softmax_weight w
  axes: tuple  # batch mesh axes
  n: int  # devices along `axes`
  batch: int  # global batch B


# ------------------------------------------------------------------------------------------------ blocks


def _pair_sum(kind, logits, b, positives, negatives):
  """Sum of the per-pair terms of a block. logits: [r, c]; b: [].

  positives: [r] logits of the matching pairs in the block (None: it holds none). negatives: [r, c] bool mask
  of the non-matching pairs (None: every logit). Positives come as a vector, not a mask, so a kind without
  negative terms (softmax) never builds an [r, c] select.
  """
  total = jnp.zeros((), jnp.float32)
  if kind.negative is not None:
    terms = kind.negative(logits, b)
    total = jnp.sum(terms if negatives is None else jnp.where(negatives, terms, 0.0))
  if positives is not None:
    total = total + jnp.sum(kind.positive(positives, b))
  return total


def _block_loss(kind, logits, b, positives, negatives, weight, complete_columns=None):
  """Loss sum of a block that holds whole rows; `_pair_sum` arguments. Returns [].

  complete_columns maps the block's [c] partial column statistics to the complete statistics of the columns
  this block accounts for; None: the block holds whole columns too.
  """
  total = _pair_sum(kind, logits, b, positives, negatives)
  if kind.stat is None:
    return total
  col = kind.stat(logits, 0)
  col = col if complete_columns is None else complete_columns(col)
  return total + kind.stat_loss(kind.stat(logits, 1), col, weight)


def _merge(kind, acc, part):
  """Merges a block's partial statistic into `acc`; None before the first block (no invariant init value)."""
  return part if acc is None else kind.stat(jnp.stack([acc, part]), 0)


def _stat_loss_grads(kind, row, col, weight):
  """(∂stat_loss/∂row [r], ∂stat_loss/∂col [c]); (None, None) for a kind without statistics."""
  if kind.stat is None:
    return None, None
  return jax.grad(kind.stat_loss, argnums=(0, 1))(row, col, weight)


def _positive_logits(zimg, ztxt, t):
  """[r] logits of the matching pairs zimg_i, ztxt_i ([r, D] each), equal to the diagonal of the block.

  From the embeddings, not the block: reading the diagonal gives the [r, c] logits a second consumer, and
  XLA:CPU then keeps one more b×b buffer live in the ring.
  """
  return t * jnp.sum(zimg * ztxt, axis=1)


def _block_grads(kind, logits, b, positives, row, col, g_row, g_col):
  """(∂loss/∂logits [r, r], ∂loss/∂b []) of one square block's terms, given complete statistics.

  positives: [r] logits of the matching pairs on the block's diagonal (None: the block holds none). row, col:
  [r] complete statistics of the block's rows and columns; g_row, g_col: the gradient of stat_loss w.r.t.
  them (all None for a kind without statistics).
  """
  if positives is None:
    glog, gb = jax.grad(lambda l, bias: _pair_sum(kind, l, bias, None, None), argnums=(0, 1))(logits, b)
  else:
    eye = jnp.eye(logits.shape[0], dtype=bool)
    pair_sum = lambda l, pos, bias: _pair_sum(kind, l, bias, pos, ~eye)
    glog, gpos, gb = jax.grad(pair_sum, argnums=(0, 1, 2))(logits, positives, b)
    glog = glog + jnp.where(eye, gpos[:, None], 0.0)
  if kind.stat is not None:
    glog = (glog + g_row[:, None] * kind.stat_grad(logits, row[:, None])
            + g_col[None, :] * kind.stat_grad(logits, col[None, :]))
  return glog, gb


# ------------------------------------------------------------------------------------------------ dense


def _dense_loss(zimg, ztxt, t, b, kind, weight):
  """One global block. zimg, ztxt: [B, D]; t, b: [] float32. Returns [] float32."""
  zimg, ztxt = zimg.astype(jnp.float32), ztxt.astype(jnp.float32)
  logits = t * (zimg @ ztxt.T)  # [B, B]
  negatives = ~jnp.eye(logits.shape[0], dtype=bool)
  return _block_loss(kind, logits, b, _positive_logits(zimg, ztxt, t), negatives, weight) / logits.shape[0]


# ------------------------------------------------------------------------------------------------ gather


def _gather_local(spec, zimg, ztxt, t, b):
  """Per-device body of impl='gather'. zimg, ztxt: [b, D] local rows; t, b: []. Returns [] (global mean).

  Autodiff transposes all_gather into a reduce-scatter, so each device gets the gradient of its own rows.
  """
  zimg, ztxt = zimg.astype(jnp.float32), ztxt.astype(jnp.float32)
  rows = zimg.shape[0]
  # Column of each local row's positive in the gathered [b, B] matrix.
  pos = lax.axis_index(spec.axes) * rows + jnp.arange(rows)
  positives = _positive_logits(zimg, ztxt, t)  # [b]
  all_txt = lax.all_gather(ztxt, spec.axes, tiled=True)  # [B, D]
  logits = t * (zimg @ all_txt.T)  # [b, B]
  negatives = jnp.arange(spec.batch)[None, :] != pos[:, None]
  local = _block_loss(spec.kind, logits, b, positives, negatives, spec.weight,
                      functools.partial(_own_columns, spec))
  return lax.psum(local, spec.axes) / spec.batch


def _own_columns(spec, partial):
  """[B] partial column statistics of the local rows -> [b] complete statistics of the local text rows.

  all_to_all hands each device the partials of its own columns from every device: B numbers per device,
  where an all-gather of the partials would move n·B.
  """
  parts = lax.all_to_all(partial.reshape(spec.n, -1), spec.axes, 0, 0, tiled=True)  # [n, b]: row k from device k
  return spec.kind.stat(parts, 0)


# ------------------------------------------------------------------------------------------------ ring
#
# Device k holds image rows k and text rows k. Text blocks move one step along the ring per iteration
# (k → k+1), so at step s device k sees text block k−s; step 0 is the diagonal block, the only one holding
# positives. Quantities that belong to a text block (its column statistics, its gradient) travel with the
# block and take one last hop home after the loop.
#
# Why a custom VJP: differentiating the loop with autodiff stores the b×b logits of every step (n of them)
# for the backward pass, i.e. b×B per device: the memory growth of open_clip's SigLipLoss. The backward pass
# here runs the ring again and recomputes each block from the embeddings; the residuals are the local
# embeddings and the complete [b] row and column statistics, which give each block its gradient alone.


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
  """Returns (per-device partial loss sum [], row statistics [b], column statistics of the local texts [b])."""
  kind = spec.kind

  def block(carry, travel, diagonal):
    total, row = carry
    txt, col = travel
    logits = t * (zimg @ txt.T)  # [b, b]: local images × visiting texts
    if diagonal:  # txt is ztxt
      negatives = ~jnp.eye(logits.shape[0], dtype=bool)
      total = total + _pair_sum(kind, logits, b, _positive_logits(zimg, txt, t), negatives)
    else:
      total = total + _pair_sum(kind, logits, b, None, None)
    if kind.stat is not None:
      row, col = _merge(kind, row, kind.stat(logits, 1)), _merge(kind, col, kind.stat(logits, 0))
    return (total, row), (txt, col)

  (total, row), (_, col) = _ring_scan(spec, block, (jnp.zeros((), jnp.float32), None), (ztxt, None))
  if kind.stat is not None:
    col = _shift(col, spec)  # home
    total = total + kind.stat_loss(row, col, spec.weight)
  return total, row, col


def _ring_backward(spec, res, g):
  """Gradients of g·(partial loss sum) by a second trip around the ring, recomputing each block."""
  zimg, ztxt, t, b, row, col = res
  g_row, g_col = _stat_loss_grads(spec.kind, row, col, spec.weight)

  def block(carry, travel, diagonal):
    dimg, dt, db = carry
    txt, txt_col, txt_g_col, dtxt = travel
    sims = zimg @ txt.T  # [b, b]
    positives = _positive_logits(zimg, txt, t) if diagonal else None
    glog, gb = _block_grads(spec.kind, t * sims, b, positives, row, txt_col, g_row, txt_g_col)
    glog = g * glog
    dimg = dimg + t * (glog @ txt)
    dtxt = t * (glog.T @ zimg) if dtxt is None else dtxt + t * (glog.T @ zimg)
    dt = dt + jnp.sum(glog * sims)
    db = db + g * gb
    return (dimg, dt, db), (txt, txt_col, txt_g_col, dtxt)

  zero = jnp.zeros((), jnp.float32)
  carry = (jnp.zeros_like(zimg), zero, zero)
  (dimg, dt, db), (_, _, _, dtxt) = _ring_scan(spec, block, carry, (ztxt, col, g_col, None))
  dtxt = _shift(dtxt, spec)  # home
  return dimg, dtxt, dt, db


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring_loss(spec, zimg, ztxt, t, b):
  return _ring_fwd(spec, zimg, ztxt, t, b)[0]


def _ring_fwd(spec, zimg, ztxt, t, b):
  total, row, col = _ring_forward(spec, zimg, ztxt, t, b)
  loss = lax.psum(total, spec.axes) / spec.batch
  return loss, (zimg, ztxt, t, b, row, col)


def _ring_bwd(spec, res, g):
  # loss = psum(total) / B: every device's partial sum receives the cotangent g / B.
  return _ring_backward(spec, res, g / spec.batch)


_ring_loss.defvjp(_ring_fwd, _ring_bwd)
