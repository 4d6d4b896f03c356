"""Text transformer tower (CLIP / SigLIP): token ids [B, L] -> embedding [B, embed_dim].

Token + learned position embedding -> Encoder (causal mask, or pad keys masked when bidirectional unless
`mask_pad=False`) -> final norm -> pooling -> projection head.
"""

import flax.linen as nn
import jax.numpy as jnp

from vitclip.models import layers
from vitclip.models.variants import decode_variant

# 'last': the last non-pad token; 'final': position L - 1 whatever it holds (big_vision / SigLIP, which pad with
# the EOS id and pool the padded end of the sequence).
POOLS = ('eos', 'last', 'final', 'first', 'mean', 'map')


def last_non_pad(tokens, pad_id: int):
  """int [B, L] -> int32 [B]: index of the last token != pad_id (0 for an all-pad row)."""
  keep = tokens != pad_id
  return jnp.where(keep.any(-1), tokens.shape[1] - 1 - jnp.argmax(keep[:, ::-1], axis=-1), 0)


def eos_position(tokens, eos_id: int, pad_id: int):
  """int [B, L] -> int32 [B]: the first EOS token; eos_id == -1: the largest id (OpenAI's EOT is the largest
  id of its vocabulary); rows without EOS: the last non-pad token."""
  if eos_id == -1:
    return jnp.argmax(tokens, axis=-1)
  is_eos = tokens == eos_id
  return jnp.where(is_eos.any(-1), jnp.argmax(is_eos, axis=-1), last_non_pad(tokens, pad_id))


class TextTransformer(nn.Module):
  """Text tower. Fields mirror `config.model.text` plus the shared model settings."""
  variant: str = 'B'
  vocab_size: int = 32_000
  max_len: int = 16
  causal: bool = True
  mask_pad: bool = True  # Bidirectional only: pad keys are masked. False: attend everywhere (SigLIP).
  pool: str = 'eos'
  eos_id: int = 2
  pad_id: int = 0
  act: str = 'gelu'
  ln_eps: float = 1e-6
  head: str = 'linear'
  head_bias: bool = False
  embed_dim: int = 512
  dtype: layers.Dtype = 'float32'
  remat_policy: str = 'none'
  scan: bool = False
  attention_chunk: int = 0  # Queries per chunk of the encoder's attention (layers.dot_product_attention).
  mlp_chunk: int = 0  # Tokens per chunk of the encoder's MLPs (layers.chunked_mlp).

  @nn.compact
  def __call__(self, tokens):
    """tokens: int [B, L], L <= max_len -> [B, embed_dim] (not normalized) in the computation dtype."""
    v = decode_variant(self.variant)
    width = v['width']
    if self.pool not in POOLS:
      raise ValueError(f'Unknown text pool {self.pool!r}; use one of {POOLS}.')
    layers.check_head(self.head, width, self.embed_dim, 'text')
    if tokens.ndim != 2 or tokens.shape[1] > self.max_len:
      raise ValueError(f'Tokens of shape {tokens.shape} must be [B, L] with L <= max_len={self.max_len}.')
    dtype = layers.canonical_dtype(self.dtype)
    length = tokens.shape[1]

    x = nn.Embed(self.vocab_size, width, embedding_init=nn.initializers.normal(stddev=0.02),
                 param_dtype=jnp.float32, name='Embed_0')(tokens)
    pos = self.param('pos_embedding', nn.initializers.normal(stddev=0.01), (1, self.max_len, width),
                     jnp.float32)
    x = (x + pos[:, :length]).astype(dtype)

    not_pad = tokens != self.pad_id  # [B, L]
    if self.causal:  # Pads come after EOS, so causal attention never lets a pooled position see them.
      mask = nn.make_causal_mask(tokens, dtype=jnp.bool_)  # [B, 1, L, L]
    elif self.mask_pad:
      mask = not_pad[:, None, None, :]
    else:  # big_vision's SigLIP text tower attends to its padding too.
      mask = None
    x = layers.Encoder(depth=v['depth'], num_heads=v['num_heads'], mlp_dim=v['mlp_dim'], act=self.act,
                       ln_eps=self.ln_eps, dtype=self.dtype, remat_policy=self.remat_policy, scan=self.scan,
                       attention_chunk=self.attention_chunk, mlp_chunk=self.mlp_chunk, name='Encoder_0')(x, mask)

    rows = jnp.arange(tokens.shape[0])
    if self.pool == 'eos':
      x = x[rows, eos_position(tokens, self.eos_id, self.pad_id)]
    elif self.pool == 'last':
      x = x[rows, last_non_pad(tokens, self.pad_id)]
    elif self.pool == 'final':
      x = x[:, -1]
    elif self.pool == 'first':
      x = x[:, 0]
    elif self.pool == 'mean':
      weights = not_pad.astype(jnp.float32)[..., None]
      x = (jnp.sum(x.astype(jnp.float32) * weights, axis=1) / jnp.maximum(weights.sum(1), 1.)).astype(dtype)
    else:
      x = layers.MAPHead(v['num_heads'], v['mlp_dim'], self.act, self.ln_eps, self.dtype, name='MAPHead_0')(
          x, not_pad)
    return layers.projection_head(x, self.head, self.embed_dim, self.head_bias, self.dtype)
