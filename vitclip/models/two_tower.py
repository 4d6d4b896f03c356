"""The contrastive two-tower model: image tower `img`, text tower `txt`, logit scale `t` and bias `b`.

Params: {'img': ..., 'txt': ..., 't': log t (scalar), 'b': bias (scalar, only when b_init is set)}.
Storing log t keeps the multiplier positive under gradient descent (CLIP). Only this module knows that:
everything else reads t and b through `logit_params` and clamps t through `clamp_logit_scale`.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitclip.models.text import TextTransformer
from vitclip.models.vit import VisionTransformer

DEFAULT_T_INIT = 1 / 0.07  # CLIP (Radford et al. 2021).


def logit_params(params) -> tuple[jax.Array, jax.Array | None]:
  """(t, b) of TwoTower params: the float32 scalar multiplier t = exp(params['t']) and the bias (None when the
  model has none)."""
  return jnp.exp(params['t']), params.get('b')


def clamp_logit_scale(params, t_max: float):
  """TwoTower params with t clamped to <= t_max (CLIP clamps after every update; t_max <= 0: no clamp)."""
  if t_max <= 0:
    return params
  return {**params, 't': jnp.minimum(params['t'], math.log(t_max))}


def l2_normalize(x, axis: int = -1, eps: float = 1e-6):
  """float32 x / max(‖x‖, eps) along `axis` (finite value and gradient at 0)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


class TwoTower(nn.Module):
  """CLIP / SigLIP two-tower model. Build it from a config with `vitclip.models.build_model(config.model)`.

  Attributes:
    img: the image tower (param subtree 'img').
    txt: the text tower (param subtree 'txt').
    t_init: initial logit scale multiplier t; None: 1/0.07.
    b_init: initial logit bias b; None: the model has no bias.
  """
  img: VisionTransformer
  txt: TextTransformer
  t_init: float | None = None
  b_init: float | None = None

  def setup(self):
    t_init = DEFAULT_T_INIT if self.t_init is None else self.t_init
    if t_init <= 0:
      raise ValueError(f't_init={t_init} must be positive (the model stores log t).')
    self.log_t = self.param('t', nn.initializers.constant(math.log(t_init)), (), jnp.float32)
    self.bias = (None if self.b_init is None else
                 self.param('b', nn.initializers.constant(self.b_init), (), jnp.float32))

  def __call__(self, images, tokens, *, keep=None):
    """Embeds a batch of pairs.

    Args:
      images: float [B, H, W, 3], or None to skip the image tower.
      tokens: int [B', L], or None to skip the text tower.
      keep: None, or int [B, K]: the image patch tokens to keep (token masking; see VisionTransformer).

    Returns:
      (zimg float32 [B, D] L2-normalized or None, ztxt float32 [B', D] L2-normalized or None,
       {'t': float32 scalar multiplier exp(params['t']), 'b': float32 scalar or None when the model has no bias}).
    """
    zimg = None if images is None else self.encode_image(images, keep=keep)
    ztxt = None if tokens is None else self.encode_text(tokens)
    return zimg, ztxt, {'t': jnp.exp(self.log_t), 'b': self.bias}

  def encode_image(self, images, *, keep=None):
    """images: float [B, H, W, 3] -> float32 [B, D], L2-normalized. keep: as in `__call__`."""
    return l2_normalize(self.img(images, keep=keep))

  def embed_image(self, images, *, keep=None, return_scores=False):
    """The image tower's output before normalization: [B, D] in the computation dtype; with `return_scores`
    the pair (that, float32 patch scores [B, h, w]; see VisionTransformer.token_scores)."""
    return self.img(images, keep=keep, return_scores=return_scores)

  def encode_text(self, tokens):
    """tokens: int [B, L] -> float32 [B, D], L2-normalized."""
    return l2_normalize(self.txt(tokens))

  def dense_image_features(self, images, mode: str = 'maskclip'):
    """images: float [B, H, W, 3] -> float32 [B, H // patch, W // patch, D], L2-normalized over D.

    mode: 'none' | 'maskclip' | 'reduced' | 'sclip' | 'clearclip' (see vitclip.models.vit.DENSE_MODES).
    """
    return l2_normalize(self.img.dense_features(images, mode))

  def dense_image_keys(self, images):
    """images: float [B, H, W, 3] -> float32 [B, H // patch, W // patch, width]: the last image block's
    attention keys per patch (not normalized), for MaskCLIP's key smoothing."""
    return self.img.dense_keys(images).astype(jnp.float32)
