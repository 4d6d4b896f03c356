"""big_vision SigLIP checkpoints (`.npz`): vitclip's parameter names are big_vision's, so the mapping is the
identity apart from scalars and scan-stacked layers.

Keys: `[params/]img/{embedding/{kernel [p, p, 3, W], bias}, pos_embedding [1, N, W],
Transformer/encoderblock_{i}/..., Transformer/encoder_norm, MAPHead_0/..., head?}`,
`txt/{Embed_0/embedding [V, W], pos_embedding [1, L, W], Encoder_0/encoderblock_{i}/..., Encoder_0/encoder_norm,
head}`, `t [1]`, `b [1]`. Checkpoints trained with `scan=True` hold one `encoderblock` whose arrays carry a
leading [depth] axis. The attention kernels keep the heads ([W, H, D]), so every size can be read off the
weights; `--variant` is then a check.
"""

import re

from vitclip import tokenizer as tokenizer_lib
from vitclip.convert import common, families
from vitclip.convert.common import ConvertError, Rule, Source, reshape_from, stacked
from vitclip.convert.readers import read_arrays

_MHA = 'MultiHeadDotProductAttention_0'


def looks_like(arrays) -> bool:
  return any(k.endswith('img/embedding/kernel') for k in arrays)


def convert(path: str, variant: str | None, tokenizer_path: str | None):
  """-> (vitclip config, params, tokenizer)."""
  arrays = read_arrays(path)
  prefix = 'params/' if any(k.startswith('params/') for k in arrays) else ''
  # Keys without the prefix; the messages name the keys as they are in the file.
  source = Source(path, {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
  source.name = f'{path} (keys under {prefix!r})' if prefix else path
  if not tokenizer_path:
    raise ConvertError(f'{path}: a big_vision checkpoint carries no tokenizer; pass --tokenizer with the '
                       'SentencePiece model it was trained with (a .model file).')
  if 'img/cls' in source or 'img/MAPHead_0/probe' not in source:
    raise ConvertError(f'{source.name}: only SigLIP image towers (no CLS token, MAP head) are supported.')
  sizes = _sizes(source, variant)
  tok = tokenizer_lib.SentencePieceTokenizer.from_file(tokenizer_path, sizes.max_len)
  families.check_tokenizer(tok, sizes.vocab_size, tokenizer_path)
  config = families.siglip_config(sizes, eos_id=tok.eos_id, pad_id=tok.pad_id,
                                  image_head='img/head/kernel' in source)
  depths = {'img': common.depth(config, 'image'), 'txt': common.depth(config, 'text')}
  rules = {p: _rule(source, p, depths) for p in common.model_order(common.abstract_params(config))}
  return config, common.assemble(config, source, rules), tok


def _rule(source: Source, path: str, depths: dict[str, int]) -> Rule:
  """Same name, or the slice of a scan-stacked 'encoderblock' (`depths`: blocks per tower, the stacked axis);
  t and b are [1] in big_vision, scalars here."""
  if path in ('t', 'b'):
    return Rule(path, reshape_from(lambda t: (1,)))
  m = re.match(r'(.*)/encoderblock_(\d+)/(.*)', path)
  if m and path not in source:
    stacked_key = f'{m.group(1)}/encoderblock/{m.group(3)}'
    if stacked_key in source:
      return Rule(stacked_key, stacked(int(m.group(2)), depths[path.split('/')[0]]))
  return Rule(path)


def _depth(source: Source, encoder: str) -> int:
  """Number of blocks of `encoder` ('img/Transformer' or 'txt/Encoder_0'), unrolled or scan-stacked."""
  unrolled = source.layer_count(re.escape(encoder) + r'/encoderblock_(\d+)/')
  if unrolled:
    return unrolled
  key = f'{encoder}/encoderblock/LayerNorm_0/scale'
  return source.shape(key, f'the depth of {encoder}')[0]


def _tower(source: Source, tower: str, encoder: str) -> tuple[int, int, int, int]:
  """(width, depth, mlp_dim, num_heads) of a tower, from its first block's kernels."""
  depth = _depth(source, f'{tower}/{encoder}')
  block = (f'{tower}/{encoder}/encoderblock_0' if f'{tower}/{encoder}/encoderblock_0/LayerNorm_0/scale' in source
           else f'{tower}/{encoder}/encoderblock')
  lead = 0 if block.endswith('_0') else 1  # Scan-stacked arrays have a leading depth axis.
  q = source.shape(f'{block}/{_MHA}/query/kernel', f'the {tower} width and heads')[lead:]
  mlp = source.shape(f'{block}/MlpBlock_0/Dense_0/kernel', f'the {tower} MLP size')[lead:]
  return q[0], depth, mlp[1], q[1]


def _sizes(source: Source, variant: str | None) -> families.Sizes:
  image_variant, text_variant = common.parse_variant(variant)
  patch = source.shape('img/embedding/kernel', 'the patch size')[0]
  if image_variant is None:
    image_variant = f'{common.find_variant(*_tower(source, "img", "Transformer"), "image tower")}/{patch}'
    text_variant = common.find_variant(*_tower(source, 'txt', 'Encoder_0'), 'text tower')
  positions = source.shape('img/pos_embedding', 'the image size')[1]
  grid = int(round(positions ** 0.5))
  vocab = source.shape('txt/Embed_0/embedding', 'the vocabulary size')[0]
  embed_dim = source.shape('txt/head/kernel', 'the embedding size')[1]
  scalar = lambda key: float(source.take(key, source.shape(key, key)).reshape(()))
  return families.Sizes(
      image_variant=image_variant, image_size=grid * int(image_variant.partition('/')[2]),
      text_variant=text_variant, vocab_size=vocab, max_len=source.shape('txt/pos_embedding', 'the text length')[1],
      embed_dim=embed_dim, log_t=scalar('t'), b=scalar('b') if 'b' in source else None)
