"""Transformer building blocks shared by the image and the text tower.

Parameter names and layouts follow big_vision (and flax's MultiHeadDotProductAttention), so that converted
SigLIP/CLIP checkpoints map one to one: `encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0,
LayerNorm_1, MlpBlock_0}`, `encoder_norm`; attention `query/key/value` kernels [width, heads, head_dim] and
`out` kernel [heads, head_dim, width]. With `scan=True` the blocks are one `encoderblock` whose params carry a
leading [depth] axis.

Shapes: B batch, L tokens (Lq / Lk for queries / keys), W width, H heads, D = W / H head dim.
Dtypes: params are float32; matmuls run in the module's `dtype`; LayerNorm statistics and softmax in float32.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any  # A jnp dtype or its name, e.g. 'bfloat16'.

ACTIVATIONS = {
    'gelu': lambda x: nn.gelu(x, approximate=False),
    'gelu_tanh': lambda x: nn.gelu(x, approximate=True),  # big_vision / SigLIP.
    'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP.
}

# Activation checkpointing of each block. 'dots' keeps the weight matmuls' outputs but recomputes the
# batched attention einsums, whose [B, H, L, L] outputs dominate activation memory.
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

# How an EncoderBlock computes: mode -> (attention map, residual around attention, MLP sub-block).
# The non-standard modes are training-free dense-feature variants applied to the last block of a CLIP ViT:
#   maskclip  (Zhou et al. 2022): identity attention (out(v)), residual and MLP kept.
#   reduced:  the value path alone: out(v), no residual, no MLP.
#   sclip     (Wang et al. 2023): softmax(q qᵀ) + softmax(k kᵀ), residual and MLP kept.
#   clearclip (Lan et al. 2024): softmax(q qᵀ), no residual, no MLP.
BLOCK_MODES = {
    'standard': ('qk', True, True),
    'maskclip': ('identity', True, True),
    'reduced': ('identity', False, False),
    'sclip': ('qq+kk', True, True),
    'clearclip': ('qq', False, False),
}


HEADS = ('linear', 'none')  # Projection from the tower width to the joint embedding ('none': identity).


def canonical_dtype(dtype: Dtype) -> jnp.dtype:
  """'bfloat16' / jnp.bfloat16 / np.dtype -> np.dtype; raises a clear error for unknown names."""
  try:
    return jnp.dtype(dtype)
  except TypeError:
    raise ValueError(f'Unknown model dtype {dtype!r}; use e.g. "float32" or "bfloat16".') from None


def activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f'Unknown activation {name!r}; use one of {sorted(ACTIVATIONS)}.')
  return ACTIVATIONS[name]


def remat_policy(name: str):
  if name not in REMAT_POLICIES:
    raise ValueError(f'Unknown remat_policy {name!r}; use one of {sorted(REMAT_POLICIES)}.')
  return REMAT_POLICIES[name]


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> activation -> Dense(W): [..., W] -> [..., W]."""
  mlp_dim: int
  act: str = 'gelu'
  dtype: Dtype = 'float32'

  @nn.compact
  def __call__(self, x):
    dense = lambda features: nn.Dense(features, dtype=canonical_dtype(self.dtype), param_dtype=jnp.float32,
                                      kernel_init=nn.initializers.xavier_uniform(),
                                      bias_init=nn.initializers.normal(stddev=1e-6))
    width = x.shape[-1]
    x = activation(self.act)(dense(self.mlp_dim)(x))
    return dense(width)(x)


class _MlpChunkBody(MlpBlock):
  """MlpBlock as an nn.scan body over token chunks: (carry, [B, chunk, W]) -> (carry, [B, chunk, W])."""

  def __call__(self, carry, x):  # pytype: disable=signature-mismatch
    return carry, super().__call__(x)


def chunked_mlp(mlp_dim: int, act: str, dtype: Dtype, token_chunk: int, x, name: str):
  """MlpBlock(name=name)(x) for x: [B, L, W] -> [B, L, W]; call inside a compact method.

  0 < token_chunk < L: the tokens go through the MLP in equal chunks of at most that many (padded), each chunk
  under remat inside an nn.scan whose params are the block's own (same names, no extra axis), so that the
  backward pass holds one chunk's [B, chunk, mlp_dim] hidden activations at a time instead of all L tokens'.
  Same values; the hidden layer is computed once more in the backward pass.
  """
  length = x.shape[1]
  if not 0 < token_chunk < length:
    return MlpBlock(mlp_dim, act, dtype, name=name)(x)
  chunks = -(-length // token_chunk)
  body = nn.remat(_MlpChunkBody, prevent_cse=False)  # Inside scan, CSE across iterations cannot happen.
  scanned = nn.scan(body, variable_broadcast='params', split_rngs={'params': False}, length=chunks)
  _, y = scanned(mlp_dim, act, dtype, name=name)(None, _split_chunks(x, 1, chunks))
  return _merge_chunks(y, 1, length)


def _split_chunks(x, axis: int, chunks: int, pad_value=0):
  """x with axis of size L -> [chunks, ...x.shape with that axis of size ceil(L / chunks)...]: equal chunks,
  the last padded with `pad_value`."""
  length = x.shape[axis]
  size = -(-length // chunks)
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, chunks * size - length)
  x = jnp.pad(x, widths, constant_values=pad_value)
  return jnp.moveaxis(x.reshape(x.shape[:axis] + (chunks, size) + x.shape[axis + 1:]), axis, 0)


def _merge_chunks(y, axis: int, length: int):
  """Inverse of `_split_chunks`: [chunks, ..., size, ...] -> [..., length, ...] (padding dropped)."""
  y = jnp.moveaxis(y, 0, axis)
  y = y.reshape(y.shape[:axis] + (-1,) + y.shape[axis + 2:])
  return jax.lax.slice_in_dim(y, 0, length, axis=axis)


class MultiHeadAttention(nn.Module):
  """Multi-head attention with explicit `query`, `key`, `value`, `out` projections.

  Written out (instead of nn.MultiHeadDotProductAttention, same param layout) so that the dense-feature modes
  can combine q, k, v differently; see `BLOCK_MODES`.
  """
  num_heads: int
  dtype: Dtype = 'float32'
  query_chunk: int = 0  # > 0: standard attention in chunks of queries (`dot_product_attention`).

  @nn.compact
  def __call__(self, inputs_q, inputs_kv=None, mask=None, attention='qk', score_rows=None):
    """Attends queries from `inputs_q` over keys/values from `inputs_kv` (default: self-attention).

    Args:
      inputs_q: [B, Lq, W].
      inputs_kv: [B, Lk, W] or None (= inputs_q).
      mask: bool, broadcastable to [B, H, Lq, Lk]; True = may attend. None: attend everywhere.
      attention: 'qk' (standard softmax(q kᵀ/√D)), 'identity' (each token takes its own value),
        'qq', 'qq+kk' (self-similarity maps of SCLIP / ClearCLIP; need Lq == Lk).
      score_rows: None, or (start, stop): also return the attention each key receives from the queries
        start:stop, averaged over those queries and the heads (A-CLIP's token score; 'qk' only).

    Returns:
      [B, Lq, W] in the computation dtype; with `score_rows` the pair (that, float32 scores [B, Lk]).
    """
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    width = inputs_q.shape[-1]
    if width % self.num_heads:
      raise ValueError(f'Width {width} is not divisible by num_heads={self.num_heads}.')
    head_dim = width // self.num_heads
    dtype = canonical_dtype(self.dtype)
    proj = lambda name: nn.DenseGeneral((self.num_heads, head_dim), dtype=dtype, param_dtype=jnp.float32,
                                        kernel_init=nn.initializers.xavier_uniform(), name=name)
    v = proj('value')(inputs_kv)  # [B, Lk, H, D]
    if score_rows is not None and attention != 'qk':
      raise ValueError(f'Attention scores need attention="qk", got {attention!r}.')
    scores = None
    if attention == 'identity':
      y = v
    elif attention == 'qk' and score_rows is None:
      y = dot_product_attention(proj('query')(inputs_q), proj('key')(inputs_kv), v, mask, self.query_chunk)
    else:
      q, k = proj('query')(inputs_q), proj('key')(inputs_kv)
      attend = lambda a, b: _attention_weights(a, b, mask)
      weights = {'qk': lambda: attend(q, k), 'qq': lambda: attend(q, q),
                 'qq+kk': lambda: attend(q, q) + attend(k, k)}
      if attention not in weights:
        raise ValueError(f'Unknown attention {attention!r}; use "qk", "identity", "qq" or "qq+kk".')
      w = weights[attention]()
      if score_rows is not None:
        scores = jnp.mean(w[:, :, score_rows[0]:score_rows[1]], axis=(1, 2))
      y = jnp.einsum('bhqk,bkhd->bqhd', w.astype(dtype), v)
    y = nn.DenseGeneral(width, axis=(-2, -1), dtype=dtype, param_dtype=jnp.float32,
                        kernel_init=nn.initializers.xavier_uniform(), name='out')(y)
    return y if score_rows is None else (y, scores)


def dot_product_attention(q, k, v, mask, query_chunk: int = 0):
  """softmax(q kᵀ / √D) v. q: [B, Lq, H, D], k, v: [B, Lk, H, D], mask: bool broadcastable to [B, H, Lq, Lk]
  or None -> [B, Lq, H, D] in v's dtype (the weights in float32, cast to v's dtype for the product).

  0 < query_chunk < Lq: the queries go in equal chunks of at most that many (padded), each chunk under
  jax.checkpoint inside lax.map, so that the backward pass holds one chunk's [B, H, chunk, Lk] float32 weights
  at a time instead of all Lq rows' (memory-efficient attention, Rabe & Staats 2021). Same values; the weights
  are computed once more in the backward pass.
  """
  def attend(q, mask):
    return jnp.einsum('bhqk,bkhd->bqhd', _attention_weights(q, k, mask).astype(v.dtype), v)

  length = q.shape[1]
  if not 0 < query_chunk < length:
    return attend(q, mask)
  chunks = -(-length // query_chunk)  # Equal chunks of at most query_chunk queries: the least padding.
  q_chunks = _split_chunks(q, 1, chunks)  # [chunks, B, chunk, H, D]; padded queries are dropped after.
  if mask is None:
    y = jax.lax.map(jax.checkpoint(lambda qc: attend(qc, None)), q_chunks)
  else:
    mask = jnp.asarray(mask).reshape((1,) * (4 - jnp.ndim(mask)) + jnp.shape(mask))
    mask = jnp.broadcast_to(mask, mask.shape[:2] + (length, k.shape[1]))
    mask_chunks = _split_chunks(mask, 2, chunks, pad_value=True)
    y = jax.lax.map(jax.checkpoint(lambda args: attend(*args)), (q_chunks, mask_chunks))
  return _merge_chunks(y, 1, length)


def _attention_weights(q, k, mask):
  """q: [B, Lq, H, D], k: [B, Lk, H, D] -> float32 softmax(q kᵀ / √D) [B, H, Lq, Lk], masked keys -> 0."""
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32) * q.shape[-1]**-0.5
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits, axis=-1)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + Attn(LN(x)); then x + MLP(LN(x)). [B, L, W] -> [B, L, W]."""
  num_heads: int
  mlp_dim: int
  act: str = 'gelu'
  ln_eps: float = 1e-6
  dtype: Dtype = 'float32'
  attention_chunk: int = 0  # Queries per chunk of standard attention; 0 = all at once.
  mlp_chunk: int = 0  # Tokens per chunk of the MLP (`chunked_mlp`); 0 = all at once.

  @nn.compact
  def __call__(self, x, mask=None, mode='standard', score_rows=None):
    """x: [B, L, W]; mask: bool broadcastable to [B, H, L, L]; mode: a key of `BLOCK_MODES`.

    Returns [B, L, W]; with `score_rows` (see MultiHeadAttention) the pair (that, scores [B, L]).
    """
    if mode not in BLOCK_MODES:
      raise ValueError(f'Unknown block mode {mode!r}; use one of {sorted(BLOCK_MODES)}.')
    attention, residual, mlp = BLOCK_MODES[mode]
    dtype = canonical_dtype(self.dtype)
    norm = lambda name: nn.LayerNorm(epsilon=self.ln_eps, dtype=dtype, param_dtype=jnp.float32, name=name)
    y = MultiHeadAttention(self.num_heads, dtype, self.attention_chunk, name='MultiHeadDotProductAttention_0')(
        norm('LayerNorm_0')(x), mask=mask, attention=attention, score_rows=score_rows)
    y, scores = y if score_rows is not None else (y, None)
    x = x + y if residual else y
    if mlp:
      x = x + chunked_mlp(self.mlp_dim, self.act, dtype, self.mlp_chunk, norm('LayerNorm_1')(x), 'MlpBlock_0')
    return x if score_rows is None else (x, scores)


class _ScanBody(EncoderBlock):
  """EncoderBlock as an nn.scan body: (carry, mask) -> (carry, scores [B, L] or None).

  The carry is x [B, L, W], or with `keep_input` the pair (x, input of the block that produced x) so the
  input of the last block is available after the scan without stacking every layer's activations.
  """
  keep_input: bool = False
  score_rows: tuple[int, int] | None = None

  def __call__(self, carry, mask=None):  # pytype: disable=signature-mismatch
    x = carry[0] if self.keep_input else carry
    y = super().__call__(x, mask, score_rows=self.score_rows)
    y, scores = y if self.score_rows is not None else (y, None)
    return ((y, x) if self.keep_input else y), scores


class Encoder(nn.Module):
  """`depth` EncoderBlocks and a final LayerNorm ('encoder_norm'): [B, L, W] -> [B, L, W].

  `remat_policy` ('none' | 'full' | 'dots') checkpoints each block; `scan` runs one block under nn.scan with
  params stacked on a leading [depth] axis (fast compiles for deep towers). Both combine freely and give the
  same outputs as the plain stack for the same (restacked) params.
  """
  depth: int
  num_heads: int
  mlp_dim: int
  act: str = 'gelu'
  ln_eps: float = 1e-6
  dtype: Dtype = 'float32'
  remat_policy: str = 'none'
  scan: bool = False
  attention_chunk: int = 0
  mlp_chunk: int = 0

  @property
  def _block_kwargs(self):
    return dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, act=self.act, ln_eps=self.ln_eps,
                dtype=self.dtype, attention_chunk=self.attention_chunk, mlp_chunk=self.mlp_chunk)

  @nn.compact
  def __call__(self, x, mask=None, *, last_block_mode='standard', return_last_input=False, score_rows=None):
    """Runs the blocks and the final norm.

    Args:
      x: [B, L, W] token embeddings.
      mask: bool, broadcastable to [B, H, L, L]; True = may attend. None: full attention.
      last_block_mode: a key of `layers.BLOCK_MODES`: how the last block computes (dense-feature variants).
      return_last_input: also return the (un-normalized) input of the last block.
      score_rows: None, or (start, stop): also return the attention each token receives from the queries
        start:stop, averaged over those queries, the heads and the blocks (A-CLIP's score; standard blocks).

    Returns:
      [B, L, W] normalized tokens in the computation dtype; with `return_last_input` the pair
      (tokens, last block input [B, L, W]); with `score_rows` the pair (tokens, float32 scores [B, L]).
    """
    if score_rows is not None and (return_last_input or last_block_mode != 'standard'):
      raise ValueError('score_rows goes with the standard forward only.')
    policy = remat_policy(self.remat_policy)
    block = EncoderBlock
    special_last = last_block_mode != 'standard'
    if self.scan:
      body = _ScanBody
      if policy is not None:
        body = nn.remat(body, policy=policy, prevent_cse=False)  # scan already stops CSE; the barrier costs.
      keep = return_last_input or special_last
      scanned = nn.scan(body, variable_axes={'params': 0}, split_rngs={'params': True}, in_axes=nn.broadcast,
                        length=self.depth)
      carry, layer_scores = scanned(keep_input=keep, score_rows=score_rows, name='encoderblock',
                                    **self._block_kwargs)((x, x) if keep else x, mask)
      x, last_input = carry if keep else (carry, None)
      if special_last:  # Evaluation only: re-run the last block (a slice of the stack) in the asked mode.
        x = EncoderBlock(**self._block_kwargs, parent=None).apply(  # parent=None: a standalone function.
            {'params': self._last_block_params()}, last_input, mask, last_block_mode)
    else:
      if policy is not None:
        block = nn.remat(block, policy=policy, static_argnums=(3, 4))  # mode, score_rows: Python values (self is 0).
      layer_scores = []
      for i in range(self.depth):
        last_input = x
        if i == self.depth - 1 and special_last:  # Same params as the remat'ed block; only the call differs.
          x = EncoderBlock(name=f'encoderblock_{i}', **self._block_kwargs)(x, mask, last_block_mode)
        elif score_rows is not None:
          x, scores = block(name=f'encoderblock_{i}', **self._block_kwargs)(x, mask, 'standard', score_rows)
          layer_scores.append(scores)
        else:
          x = block(name=f'encoderblock_{i}', **self._block_kwargs)(x, mask, 'standard', None)
    x = nn.LayerNorm(epsilon=self.ln_eps, dtype=canonical_dtype(self.dtype), param_dtype=jnp.float32,
                     name='encoder_norm')(x)
    if score_rows is not None:
      return x, jnp.mean(jnp.stack(layer_scores) if isinstance(layer_scores, list) else layer_scores, axis=0)
    return (x, last_input) if return_last_input else x

  def last_block_keys(self, x, mask=None):
    """x: [B, L, W] -> [B, L, W] attention keys (heads merged) of the last block, as MaskCLIP's key smoothing
    uses them: key projection of the block's normalized input. (Runs the whole encoder; for evaluation.)"""
    _, last_input = self(x, mask, return_last_input=True)
    last = self._last_block_params()
    dtype = canonical_dtype(self.dtype)
    y = nn.LayerNorm(epsilon=self.ln_eps, dtype=dtype, param_dtype=jnp.float32, parent=None).apply(
        {'params': last['LayerNorm_0']}, last_input)
    key_params = last['MultiHeadDotProductAttention_0']['key']
    k = nn.DenseGeneral(key_params['bias'].shape, dtype=dtype, param_dtype=jnp.float32, parent=None).apply(
        {'params': key_params}, y)  # [B, L, H, D]
    return k.reshape(*k.shape[:2], -1)

  def _last_block_params(self):
    params = self.variables['params']
    if self.scan:
      return jax.tree.map(lambda p: p[-1], params['encoderblock'])
    return params[f'encoderblock_{self.depth - 1}']


class MAPHead(nn.Module):
  """Multihead attention pooling (Lee et al. 2019; big_vision): a learned probe attends over the tokens,
  followed by a residual LN + MLP. [B, L, W] -> [B, W]."""
  num_heads: int
  mlp_dim: int
  act: str = 'gelu'
  ln_eps: float = 1e-6
  dtype: Dtype = 'float32'

  @nn.compact
  def __call__(self, x, mask=None, dense_mode=None, return_scores=False):
    """Pools x: [B, L, W] -> [B, W]; mask: bool [B, L], True = token may be attended (None: all).

    return_scores: also return the probe's attention over the tokens, averaged over heads (float32 [B, L]).

    dense_mode: a non-standard key of `BLOCK_MODES` -> [B, L, W]: every token is its own query and goes through
    the head with that mode's attention and MLP choice (the head has no residual around its attention). For a
    MAP-pooled tower this head, not the last encoder block, is the attention that pools, so MaskCLIP's change
    belongs here.
    """
    dtype = canonical_dtype(self.dtype)
    width = x.shape[-1]
    probe = self.param('probe', nn.initializers.xavier_uniform(), (1, 1, width), jnp.float32)
    attn = MultiHeadAttention(self.num_heads, dtype, name='MultiHeadDotProductAttention_0')
    scores = None
    if dense_mode is None:
      probe = jnp.broadcast_to(probe, (x.shape[0], 1, width)).astype(dtype)
      x = attn(probe, x, None if mask is None else mask[:, None, None, :], score_rows=(0, 1) if return_scores
               else None)
      x, scores = x if return_scores else (x, None)
      use_mlp = True
    else:
      if dense_mode not in BLOCK_MODES or dense_mode == 'standard':
        modes = sorted(set(BLOCK_MODES) - {'standard'})
        raise ValueError(f'MAP head dense_mode {dense_mode!r}; use one of {modes}.')
      attention, _, use_mlp = BLOCK_MODES[dense_mode]
      x = attn(x, attention=attention)
    if use_mlp:
      y = nn.LayerNorm(epsilon=self.ln_eps, dtype=dtype, param_dtype=jnp.float32, name='LayerNorm_0')(x)
      x = x + MlpBlock(self.mlp_dim, self.act, dtype, name='MlpBlock_0')(y)
    if dense_mode is not None:
      return x
    return (x[:, 0], scores) if return_scores else x[:, 0]


def check_head(head: str, width: int, embed_dim: int, tower: str):
  """Raises a clear error for an unknown head or head='none' with width != embed_dim."""
  if head not in HEADS:
    raise ValueError(f'Unknown {tower} head {head!r}; use one of {HEADS}.')
  if head == 'none' and width != embed_dim:
    raise ValueError(f'The {tower} tower has head="none" but width {width} != embed_dim {embed_dim}; use '
                     f'head="linear" or set embed_dim={width}.')


def projection_head(x, head: str, embed_dim: int, use_bias: bool, dtype: Dtype):
  """[..., W] -> [..., embed_dim] with a Dense named 'head' ('none': identity). Call inside a compact method."""
  if head == 'none':
    return x
  return nn.Dense(embed_dim, use_bias=use_bias, dtype=canonical_dtype(dtype), param_dtype=jnp.float32,
                  name='head')(x)
