"""The two model families a converted checkpoint can be, as vitclip configs: CLIP (OpenAI, open_clip, HF
CLIPModel) and SigLIP (big_vision, HF SiglipModel). Formats infer the sizes; the architecture switches that
exact parity needs are set here once.
"""

import dataclasses
import math

from vitclip.convert.common import ConvertError, base_config
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
  c = _with_sizes(base_config(), sizes)
  c.model.image.update(cls_token=True, ln_pre=True, pool='tok', patch_bias=False, head='linear', head_bias=False,
                       act=act, ln_eps=ln_eps)
  c.model.text.update(causal=True, mask_pad=True, pool='eos', eos_id=eos_id, pad_id=pad_id, head='linear',
                      head_bias=False, act=act, ln_eps=ln_eps)
  c.loss.kind = 'softmax' if sizes.b is None else 'sigmoid'
  c.tokenizer.kind, c.tokenizer.path = 'bpe', 'tokenizer.json'
  c.data.mean, c.data.std = tuple(mean), tuple(std)
  return c


def siglip_config(sizes: Sizes, *, eos_id: int, pad_id: int, image_head: bool = False,
                  act: str = 'gelu_tanh', ln_eps: float = 1e-6):
  """SigLIP: no CLS token, MAP-head pooling, patch bias, no image projection (big_vision: optional, with bias),
  bidirectional text without a pad mask pooled at the last position, text projection with bias, sigmoid loss."""
  if sizes.b is None:
    raise ConvertError('A SigLIP checkpoint needs a logit bias b; none was found.')
  c = _with_sizes(base_config(), sizes)
  if not image_head:  # The MAP-head output is the image embedding: its width is the joint size.
    c.model.embed_dim = variants.decode_variant(sizes.image_variant)['width']
  c.model.image.update(cls_token=False, ln_pre=False, pool='map', patch_bias=True,
                       head='linear' if image_head else 'none', head_bias=image_head, act=act, ln_eps=ln_eps)
  c.model.text.update(causal=False, mask_pad=False, pool='final', eos_id=eos_id, pad_id=pad_id, head='linear',
                      head_bias=True, act=act, ln_eps=ln_eps)
  c.loss.kind = 'sigmoid'
  c.tokenizer.kind, c.tokenizer.path = 'sentencepiece', 'tokenizer.model'
  c.data.mean, c.data.std = SIGLIP_MEAN, SIGLIP_STD
  return c


def _with_sizes(c, s: Sizes):
  c.model.embed_dim = s.embed_dim
  c.model.image.variant, c.model.image.image_size = s.image_variant, s.image_size
  c.model.image.posemb = 'learn'
  c.model.text.variant, c.model.text.vocab_size, c.model.text.max_len = s.text_variant, s.vocab_size, s.max_len
  # The source's t and b; the model initialises its scalars from these, so the params tree has a 'b' exactly
  # when the source has one.
  c.model.t_init = math.exp(s.log_t)
  c.model.b_init = s.b
  return c


def check_tokenizer(tokenizer, vocab_size: int, name: str):
  """The tokenizer must only produce ids the text embedding has rows for."""
  if tokenizer.vocab_size > vocab_size:
    raise ConvertError(f'The tokenizer {name} has {tokenizer.vocab_size} tokens but the text embedding has '
                       f'{vocab_size} rows; pass the tokenizer this model was trained with.')
