"""The two model families a converted checkpoint can be: CLIP (OpenAI, open_clip, HF CLIPModel) and SigLIP
(big_vision, HF SiglipModel). Formats infer the sizes; the architecture switches that exact parity needs are
set here once. Every architecture field is set explicitly, so a converted model does not depend on the
defaults of the config that later loads its config.json (that config supplies the run settings only).
"""

import dataclasses
import math

import ml_collections

from vitclip.convert.common import ConvertError
from vitclip.models import variants

# OpenAI CLIP's image normalisation (also open_clip's default).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# SigLIP maps pixels to [-1, 1].
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass
class Sizes:
  """What a format reads off its source: tower variants and the sizes outside the variant table."""
  image_variant: str  # e.g. 'B/16'
  image_size: int  # pixels; the learned position embedding covers (image_size // patch)² patches
  text_variant: str
  vocab_size: int
  max_len: int  # text positions
  embed_dim: int  # joint embedding size
  log_t: float  # the source's logit scale (log of the multiplier t)
  b: float | None = None  # logit bias (SigLIP)


def clip_config(sizes: Sizes, *, act: str, ln_eps: float, eos_id: int, pad_id: int,
                mean=OPENAI_MEAN, std=OPENAI_STD):
  """CLIP: ln_pre, CLS pooling, patch embedding without bias, projections without bias, causal text pooled at
  EOS (`eos_id=-1`: the largest id, OpenAI's EOT), softmax loss."""
  return _config(
      sizes, embed_dim=sizes.embed_dim, act=act, ln_eps=ln_eps,
      image=dict(cls_token=True, ln_pre=True, pool='tok', patch_bias=False, head='linear', head_bias=False),
      text=dict(causal=True, mask_pad=True, pool='eos', eos_id=eos_id, pad_id=pad_id, head='linear',
                head_bias=False),
      loss='softmax' if sizes.b is None else 'sigmoid', tokenizer=('bpe', 'tokenizer.json'), mean=mean, std=std)


def siglip_config(sizes: Sizes, *, eos_id: int, pad_id: int, image_head: bool = False,
                  act: str = 'gelu_tanh', ln_eps: float = 1e-6):
  """SigLIP: no CLS token, MAP-head pooling, patch bias, no image projection (big_vision: optional, with bias),
  bidirectional text without a pad mask pooled at the last position, text projection with bias, sigmoid loss."""
  if sizes.b is None:
    raise ConvertError('A SigLIP checkpoint needs a logit bias b; none was found.')
  # Without an image projection the MAP-head output is the image embedding: its width is the joint size.
  embed_dim = sizes.embed_dim if image_head else variants.decode_variant(sizes.image_variant)['width']
  return _config(
      sizes, embed_dim=embed_dim, act=act, ln_eps=ln_eps,
      image=dict(cls_token=False, ln_pre=False, pool='map', patch_bias=True,
                 head='linear' if image_head else 'none', head_bias=image_head),
      text=dict(causal=False, mask_pad=False, pool='final', eos_id=eos_id, pad_id=pad_id, head='linear',
                head_bias=True),
      loss='sigmoid', tokenizer=('sentencepiece', 'tokenizer.model'), mean=SIGLIP_MEAN, std=SIGLIP_STD)


# Architecture fields every converted model shares: a plain ViT (learned position embedding, patch stem, no
# registers, global attention), and params written per block (no scan).
_PLAIN_IMAGE = dict(posemb='learn', stem='patch', num_registers=0, attention_radius=0)


def _config(s: Sizes, *, embed_dim: int, act: str, ln_eps: float, image: dict, text: dict, loss: str,
            tokenizer: tuple[str, str], mean, std) -> ml_collections.ConfigDict:
  """The fields of a vitclip config that the source determines (config.json holds these; whoever loads it
  lays it over a full config such as configs/base.py's): every model architecture field, the tokenizer, the
  loss kind and the input normalisation."""
  tower = dict(act=act, ln_eps=ln_eps)
  return ml_collections.ConfigDict({
      'model': {
          'embed_dim': embed_dim, 'scan': False,
          # The source's t and b; the model initialises its scalars from these, so the params tree has a 'b'
          # exactly when the source has one.
          't_init': math.exp(s.log_t), 'b_init': s.b,
          'image': dict(variant=s.image_variant, image_size=s.image_size, **_PLAIN_IMAGE, **image, **tower),
          'text': dict(variant=s.text_variant, vocab_size=s.vocab_size, max_len=s.max_len, **text, **tower)},
      'tokenizer': {'kind': tokenizer[0], 'path': tokenizer[1]},
      'loss': {'kind': loss},
      'data': {'mean': tuple(mean), 'std': tuple(std)}})


def check_tokenizer(tokenizer, vocab_size: int, name: str):
  """The tokenizer must only produce ids the text embedding has rows for."""
  if tokenizer.vocab_size > vocab_size:
    raise ConvertError(f'The tokenizer {name} has {tokenizer.vocab_size} tokens but the text embedding has '
                       f'{vocab_size} rows; pass the tokenizer this model was trained with.')
