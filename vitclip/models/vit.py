"""Vision Transformer image tower (Dosovitskiy et al. 2021) with the CLIP / SigLIP options, and dense features.

images [B, H, W, 3] -> patches [B, h, w, W] (h = H // patch) -> tokens [B, (1 +) R + h·w, W] -> Encoder
-> pooled [B, W] -> projection [B, embed_dim].

Layout choices that matter for converted checkpoints:
  * the learned `pos_embedding` [1, (1 +) N, W] covers the CLS token too (OpenAI CLIP layout; N = grid²);
  * one final norm (`Transformer/encoder_norm`) over all tokens before pooling. OpenAI's `ln_post` after taking
    the CLS token is the same function because LayerNorm acts per token.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitclip.models import layers
from vitclip.models.variants import decode_variant

POOLS = ('tok', 'gap', 'map')
POSEMBS = ('learn', 'sincos2d')
STEMS = ('patch', 'conv')
# Dense-feature mode -> how the last encoder block computes (see layers.BLOCK_MODES).
DENSE_MODES = {
    'none': 'standard', 'plain': 'standard',
    'maskclip': 'maskclip', 'reduced': 'reduced', 'sclip': 'sclip', 'clearclip': 'clearclip',
}


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.) -> jax.Array:
  """Fixed 2-D sin-cos position embedding (big_vision): float32 [1, h·w, width]; width % 4 == 0."""
  if width % 4:
    raise ValueError(f'posemb="sincos2d" needs a width divisible by 4, got {width}; use posemb="learn".')
  y, x = jnp.mgrid[:h, :w]
  omega = 1. / temperature**(jnp.arange(width // 4) / max(width // 4 - 1, 1))
  y = jnp.einsum('m,d->md', y.flatten(), omega)
  x = jnp.einsum('m,d->md', x.flatten(), omega)
  return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)[None].astype(jnp.float32)


def resize_posemb(posemb: jax.Array, h: int, w: int) -> jax.Array:
  """Bilinearly resizes a square grid of position embeddings [1, g·g, W] to [1, h·w, W]."""
  g = math.isqrt(posemb.shape[1])
  if g * g != posemb.shape[1]:
    raise ValueError(f'Cannot resize a position embedding of {posemb.shape[1]} tokens: not a square grid.')
  if (g, g) == (h, w):
    return posemb
  grid = posemb.reshape(g, g, -1)
  return jax.image.resize(grid, (h, w, grid.shape[-1]), method='bilinear').reshape(1, h * w, -1)


def _keep_tokens(x, mask, keep, num_prefix: int):
  """Drops patch tokens: x [B, P + h·w, W] -> [B, P + K, W] keeping the P prefix tokens and the patches `keep`
  [B, K]; the attention mask [1, 1, L, L] (or None) follows -> [B, 1, P + K, P + K]."""
  patches = jnp.take_along_axis(x[:, num_prefix:], keep[..., None].astype(jnp.int32), axis=1)
  x = jnp.concatenate([x[:, :num_prefix], patches], axis=1)
  if mask is not None:
    prefix = jnp.broadcast_to(jnp.arange(num_prefix), (keep.shape[0], num_prefix))
    idx = jnp.concatenate([prefix, keep + num_prefix], axis=1)  # [B, P + K] rows of the full mask.
    mask = mask[0, 0][idx[:, :, None], idx[:, None, :]][:, None]
  return x, mask


def resample_posemb(posemb: jax.Array, num_prefix: int, grid: int) -> jax.Array:
  """[1, num_prefix + g·g, W] -> [1, num_prefix + grid·grid, W]: the g×g grid resized bilinearly (as the ViT does
  for other input sizes at apply time), the prefix (CLS) tokens kept as they are. Used to load a learned
  position embedding trained at another resolution."""
  return jnp.concatenate([posemb[:, :num_prefix], resize_posemb(posemb[:, num_prefix:], grid, grid)], axis=1)


class VisionTransformer(nn.Module):
  """ViT image tower. Fields mirror `config.model.image` plus the shared model settings."""
  variant: str = 'B/16'
  image_size: int = 224  # Sets the learned position embedding grid; other sizes interpolate it.
  posemb: str = 'learn'
  cls_token: bool = True
  ln_pre: bool = False
  pool: str = 'tok'
  act: str = 'gelu'
  ln_eps: float = 1e-6
  patch_bias: bool = True
  stem: str = 'patch'
  head: str = 'linear'
  head_bias: bool = False
  embed_dim: int = 512
  dtype: layers.Dtype = 'float32'
  remat_policy: str = 'none'
  scan: bool = False
  attention_chunk: int = 0  # Queries per chunk of the encoder's attention (layers.dot_product_attention).
  mlp_chunk: int = 0  # Tokens per chunk of the encoder's MLPs (layers.chunked_mlp).
  # Register tokens (Darcet et al. 2024, "Vision Transformers Need Registers"): learned tokens after the CLS
  # token, without position embedding, dropped from the output. They give the encoder room for global
  # computation that would otherwise be stored in low-information patch tokens, whose dense features then no
  # longer describe their own patch.
  num_registers: int = 0
  # Local attention: patch tokens attend only to patch tokens within this many grid steps (Chebyshev distance)
  # in every encoder block; 0 = global attention. CLS and register tokens attend, and are attended, everywhere.
  # A patch token then holds information from its neighbourhood only, so a global-average-pooled tower cannot
  # write the scene's class into distant background patches, which dense probing reads (configs/shapes.py).
  attention_radius: int = 0

  @nn.compact
  def __call__(self, images, *, dense_mode=None, keep=None, return_scores=False):
    """Embeds images (not normalized).

    Args:
      images: [B, H, W, 3] float. Like a VALID convolution, rows / columns beyond a multiple of the patch
        size are ignored (SigLIP So400m/14 at 384 px: 27 x 27 patches).
      dense_mode: None for the pooled embedding, a key of `DENSE_MODES` for per-patch features, or 'keys'
        for the last block's per-patch attention keys (see `dense_keys`).
      keep: None (every token), or int [B, K]: indices (row-major in the h x w patch grid) of the patch tokens
        that enter the encoder, the others dropped after the position embedding (FLIP / A-CLIP token masking;
        pooled embedding only). CLS and register tokens are always kept.
      return_scores: also return each patch's attention score (`token_scores`); pooled embedding only.

    Returns:
      [B, embed_dim] (dense_mode None), [B, H // patch, W // patch, embed_dim] (dense modes) or
      [B, H // patch, W // patch, width] ('keys'), in the computation dtype; with `return_scores` the pair
      (embedding, float32 scores [B, H // patch, W // patch]).
    """
    v = self._hparams()
    x, (h, w) = self._embed(images, v)
    encoder = layers.Encoder(
        depth=v['depth'], num_heads=v['num_heads'], mlp_dim=v['mlp_dim'], act=self.act, ln_eps=self.ln_eps,
        dtype=self.dtype, remat_policy=self.remat_policy, scan=self.scan, attention_chunk=self.attention_chunk,
        mlp_chunk=self.mlp_chunk, name='Transformer')
    num_prefix = int(self.cls_token) + self.num_registers  # Tokens in front of the patches.
    mask = self._attention_mask(h, w, num_prefix)
    if (keep is not None or return_scores) and dense_mode is not None:
      raise ValueError('keep / return_scores go with the pooled embedding (dense_mode=None).')
    if keep is not None:
      x, mask = _keep_tokens(x, mask, keep, num_prefix)
    if return_scores:
      return self._pool_with_scores(x, mask, encoder, v, num_prefix, (h, w))
    if dense_mode == 'keys':
      k = encoder.last_block_keys(x, mask)[:, num_prefix:]
      return k.reshape(k.shape[0], h, w, -1)
    if dense_mode is not None:
      if dense_mode not in DENSE_MODES:
        raise ValueError(f'Unknown dense feature mode {dense_mode!r}; use one of {sorted(DENSE_MODES)}.')
      mode = DENSE_MODES[dense_mode]
      if self.pool == 'map' and mode != 'standard':  # The MAP head is the attention that pools: change it.
        x = self._map_head(v)(encoder(x, mask), dense_mode=mode)
      else:
        x = encoder(x, mask, last_block_mode=mode)
      x = x[:, num_prefix:]  # Every patch token goes through the projection head.
      return self._project(x).reshape(x.shape[0], h, w, -1)
    x = encoder(x, mask)
    if self.pool == 'tok':
      x = x[:, 0]
    elif self.pool == 'gap':
      x = jnp.mean(x[:, num_prefix:], axis=1)
    else:
      x = self._map_head(v)(x)
    return self._project(x)

  @property
  def patch_size(self) -> int:
    return decode_variant(self.variant)['patch_size']

  def _pool_with_scores(self, x, mask, encoder, v, num_prefix: int, grid: tuple[int, int]):
    """(embedding [B, embed_dim], scores [B, h, w]): A-CLIP's attention score of each patch, read from the
    query that pools (see `token_scores`)."""
    b, n = x.shape[0], x.shape[1]
    if self.pool == 'map':
      x, scores = self._map_head(v)(encoder(x, mask), return_scores=True)
    else:
      rows = (0, 1) if self.pool == 'tok' else (num_prefix, n)
      x, scores = encoder(x, mask, score_rows=rows)
      x = x[:, 0] if self.pool == 'tok' else jnp.mean(x[:, num_prefix:], axis=1)
    return self._project(x), scores[:, num_prefix:].reshape(b, *grid)

  def token_scores(self, images):
    """images [B, H, W, 3] -> float32 [B, H // patch, W // patch]: how much attention each patch receives from
    the query that pools the image, averaged over heads (and blocks) — A-CLIP's token score
    s_P = 1/(HL) Σ_l Σ_h softmax(q_lh(CLS)·k_lh(P)/√D) for pool='tok'. Where no CLS token pools, the closest
    equivalent: pool='gap' averages the attention rows of all patch queries in every block (a patch's weight in
    the mean of the attention outputs, which GAP pools); pool='map' uses the MAP head's probe, the one query
    that pools (a single attention layer)."""
    return self(images, return_scores=True)[1]

  def _attention_mask(self, h: int, w: int, num_prefix: int) -> jax.Array | None:
    """bool [1, 1, L, L] (L = num_prefix + h·w), True = may attend; None for global attention."""
    if not self.attention_radius:
      return None
    y, x = np.divmod(np.arange(h * w), w)
    near = (np.abs(y[:, None] - y[None]) <= self.attention_radius) & (
        np.abs(x[:, None] - x[None]) <= self.attention_radius)
    mask = np.ones((num_prefix + h * w,) * 2, bool)
    mask[num_prefix:, num_prefix:] = near
    return jnp.asarray(mask[None, None])

  def _map_head(self, v):
    return layers.MAPHead(v['num_heads'], v['mlp_dim'], self.act, self.ln_eps, self.dtype, name='MAPHead_0')

  def dense_features(self, images, mode='maskclip'):
    """images [B, H, W, 3] -> patch features [B, H // patch, W // patch, embed_dim] (not normalized).

    mode: 'none' / 'plain' (last-layer patch tokens), 'maskclip', 'reduced', 'sclip' or 'clearclip'
    (how the last block computes, see layers.BLOCK_MODES; with pool='map' the MAP head computes so instead,
    every token its own query). The CLS token and registers are dropped.
    """
    return self(images, dense_mode=mode)

  def dense_keys(self, images):
    """images [B, H, W, 3] -> [B, H // patch, W // patch, width]: the last block's attention keys per patch
    (heads merged), for MaskCLIP's key smoothing. The CLS token is dropped."""
    return self(images, dense_mode='keys')

  def _hparams(self) -> dict:
    """Decoded variant, after checking the options that do not depend on the input."""
    v = decode_variant(self.variant)
    if 'patch_size' not in v:
      raise ValueError(f'Image variant {self.variant!r} has no patch size; use e.g. "B/16".')
    if self.pool not in POOLS:
      raise ValueError(f'Unknown image pool {self.pool!r}; use one of {POOLS}.')
    if self.num_registers < 0:
      raise ValueError(f'Image num_registers={self.num_registers} must be >= 0.')
    if isinstance(self.attention_radius, bool) or not isinstance(self.attention_radius, int) or (
        self.attention_radius < 0):
      raise ValueError(f'Image attention_radius={self.attention_radius!r} must be an integer >= 0 (0: global '
                       'attention).')
    if self.pool == 'tok' and not self.cls_token:
      raise ValueError('pool="tok" pools the CLS token but cls_token=False; set cls_token=True or use '
                       'pool="gap" / "map".')
    if self.posemb not in POSEMBS:
      raise ValueError(f'Unknown image posemb {self.posemb!r}; use one of {POSEMBS}.')
    if self.stem not in STEMS:
      raise ValueError(f'Unknown image stem {self.stem!r}; use one of {STEMS}.')
    p = v['patch_size']
    if self.stem == 'conv' and (p < 2 or p & (p - 1)):
      raise ValueError(f'stem="conv" downsamples by stride-2 convolutions and needs a power-of-two patch size; '
                       f'variant {self.variant!r} has patch {p}. Use stem="patch" or a patch size such as 8 '
                       'or 16.')
    layers.check_head(self.head, v['width'], self.embed_dim, 'image')
    return v

  def _embed(self, images, v):
    """images [B, H, W, 3] -> (tokens [B, (1 +) R + h·w, W]: CLS, R registers, patches; in the computation
    dtype, (h, w))."""
    p, width = v['patch_size'], v['width']
    if images.ndim != 4 or images.shape[1] < p or images.shape[2] < p:
      raise ValueError(f'Images of shape {images.shape} must be [B, H, W, C] with H, W >= patch size {p}.')
    dtype = layers.canonical_dtype(self.dtype)
    x = images.astype(dtype)
    k = p  # Kernel and stride of the token embedding.
    if self.stem == 'conv':
      x, k = self._conv_stem(x, p, width, dtype), 1
    x = nn.Conv(width, (k, k), strides=(k, k), padding='VALID', use_bias=self.patch_bias, dtype=dtype,
                param_dtype=jnp.float32, name='embedding')(x)
    b, h, w, _ = x.shape
    x = x.reshape(b, h * w, width)
    cls = self.param('cls', nn.initializers.zeros, (1, 1, width), jnp.float32) if self.cls_token else None
    if self.posemb == 'learn':
      grid = self.image_size // p
      n_extra = int(self.cls_token)
      pos = self.param('pos_embedding', nn.initializers.normal(stddev=width**-0.5),
                       (1, n_extra + grid * grid, width), jnp.float32)
      pos_cls, pos_grid = pos[:, :n_extra], resize_posemb(pos[:, n_extra:], h, w)
    else:  # The CLS token gets no position embedding (big_vision).
      pos_cls, pos_grid = jnp.zeros((1, int(self.cls_token), width)), posemb_sincos_2d(h, w, width)
    x = x + pos_grid.astype(dtype)
    if self.num_registers:
      reg = self.param('registers', nn.initializers.normal(stddev=0.02), (1, self.num_registers, width),
                       jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(reg.astype(dtype), (b, self.num_registers, width)), x], axis=1)
    if cls is not None:
      x = jnp.concatenate([jnp.broadcast_to((cls + pos_cls).astype(dtype), (b, 1, width)), x], axis=1)
    if self.ln_pre:  # OpenAI CLIP normalizes the embedded tokens before the encoder.
      x = nn.LayerNorm(epsilon=self.ln_eps, dtype=dtype, param_dtype=jnp.float32, name='ln_pre')(x)
    return x, (h, w)

  def _conv_stem(self, x, patch: int, width: int, dtype):
    """ViTc stem (Xiao et al. 2021, "Early convolutions help transformers see better"): log2(patch) stride-2
    3x3 convolutions, zero-padded, channels doubling up to `width`, each followed by LayerNorm and the
    activation; the 1x1 `embedding` conv that follows maps to the tokens. On the shapes world the tower
    learns much faster than with a single patchify layer (numbers in configs/shapes.py).
    [B, H, W, 3] -> [B, H // patch, W // patch, width]; rows / columns beyond a multiple of the patch size are
    dropped first, as by the patchify stem."""
    n = patch.bit_length() - 1
    x = x[:, :x.shape[1] // patch * patch, :x.shape[2] // patch * patch]
    for i in range(n):
      x = nn.Conv(max(width >> (n - 1 - i), 8), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=dtype,
                  param_dtype=jnp.float32, name=f'stem_conv{i}')(x)
      x = nn.LayerNorm(epsilon=self.ln_eps, dtype=dtype, param_dtype=jnp.float32, name=f'stem_norm{i}')(x)
      x = layers.activation(self.act)(x)
    return x

  def _project(self, x):
    return layers.projection_head(x, self.head, self.embed_dim, self.head_bias, self.dtype)
