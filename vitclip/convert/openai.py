"""OpenAI CLIP / open_clip state dicts (ViT image towers), as safetensors or a torch file.

Layout: `visual.{conv1.weight [W, 3, p, p], class_embedding [W], positional_embedding [1 + N, W], ln_pre,
transformer.resblocks.{i}.{ln_1, attn.in_proj_{weight [3W, W], bias}, attn.out_proj, ln_2, mlp.c_fc,
mlp.c_proj}, ln_post, proj [W, E]}`, `token_embedding.weight [V, W']`, `positional_embedding [L, W']`,
`transformer.resblocks.*`, `ln_final`, `text_projection [W', E]`, `logit_scale` (log t), open_clip SigLIP-style
models also `logit_bias`.

The sizes are read off the weights. Heads are not stored anywhere, so they come from vitclip's variant table
(which matches OpenAI's width // 64 and open_clip's configs for the table's sizes). The activation is not stored
either: 'openai' means QuickGELU (OpenAI's models and open_clip's '-quickgelu' ones), 'open_clip' means GELU
(open_clip's default).
"""

from vitclip import tokenizer as tokenizer_lib
from vitclip.convert import common, families
from vitclip.convert.common import (CONV, OPENAI_BLOCK, ConvertError, Rule, Source, SAME, layernorm_rules,
                                    reshape_from, torch_encoder_rules)
from vitclip.convert.readers import read_arrays

ACTIVATIONS = {'openai': 'quick_gelu', 'open_clip': 'gelu'}
LN_EPS = 1e-5  # torch's LayerNorm default, used by both.
OPENAI_PAD_ID = 0  # clip.tokenize and open_clip pad with 0.
IGNORE = r'^(input_resolution|context_length|vocab_size)$|attn_mask$'  # Sizes and buffers, not weights.
_BLOCK = r'{}transformer\.resblocks\.(\d+)\.'


def looks_like(arrays) -> bool:
  return 'visual.conv1.weight' in arrays or 'visual.layer1.0.conv1.weight' in arrays


def convert(path: str, format_: str, variant: str | None, tokenizer_path: str | None):
  """-> (vitclip config, params, tokenizer)."""
  source = Source(path, read_arrays(path), ignore=IGNORE)
  if 'visual.layer1.0.conv1.weight' in source:
    raise ConvertError(f'{path}: a ResNet image tower (OpenAI RN50 etc.); vitclip converts ViT towers only.')
  sizes = _sizes(source, variant)
  if not tokenizer_path:
    raise ConvertError(f'{path}: an OpenAI/open_clip state dict carries no tokenizer; pass --tokenizer (a CLIP '
                       'tokenizer.json, a folder with vocab.json + merges.txt, or bpe_simple_vocab_16e6.txt.gz).')
  tok = tokenizer_lib.Tokenizer.from_tokenizer(
      tokenizer_lib.load_clip_bpe(tokenizer_path, vocab_size=sizes.vocab_size, pad_id=OPENAI_PAD_ID),
      sizes.max_len, name=tokenizer_path)
  families.check_tokenizer(tok, sizes.vocab_size, tokenizer_path)
  # OpenAI pools at the largest id (its EOT token); eos_id=-1 says so.
  config = families.clip_config(sizes, act=ACTIVATIONS[format_], ln_eps=LN_EPS, eos_id=-1, pad_id=tok.pad_id)
  return config, common.assemble(config, source, _rules(source, config)), tok


def _sizes(source: Source, variant: str | None) -> families.Sizes:
  width, _, patch, _ = source.shape('visual.conv1.weight', 'the image width and patch size')
  positions = source.shape('visual.positional_embedding', 'the image size')[0]
  grid = int(round((positions - 1) ** 0.5))
  vocab, text_width = source.shape('token_embedding.weight', 'the vocabulary size')
  image_variant, text_variant = common.parse_variant(variant)
  if image_variant is None:
    image_variant = f'{_tower_variant(source, "visual.", width, "image tower")}/{patch}'
    text_variant = _tower_variant(source, '', text_width, 'text tower')
  log_t = float(source.take('logit_scale', source.shape('logit_scale', 'the logit scale')).reshape(()))
  b = (float(source.take('logit_bias', source.shape('logit_bias', 'the logit bias')).reshape(()))
       if 'logit_bias' in source else None)
  return families.Sizes(
      image_variant=image_variant, image_size=grid * int(image_variant.partition('/')[2]),
      text_variant=text_variant, vocab_size=vocab,
      max_len=source.shape('positional_embedding', 'the text length')[0],
      embed_dim=source.shape('visual.proj', 'the embedding size')[1], log_t=log_t, b=b)


def _tower_variant(source: Source, prefix: str, width: int, what: str) -> str:
  depth = source.layer_count(_BLOCK.format(prefix.replace('.', r'\.')))
  mlp = source.shape(f'{prefix}transformer.resblocks.0.mlp.c_fc.weight', f'the {what} MLP size')[0]
  return common.find_variant(width, depth, mlp, None, what)


def _rules(source: Source, config) -> dict[str, Rule]:
  rules = {'img/embedding/kernel': Rule('visual.conv1.weight', CONV),
           'img/cls': Rule('visual.class_embedding', reshape_from(lambda t: t[-1:])),
           'img/pos_embedding': Rule('visual.positional_embedding', reshape_from(lambda t: t[1:]))}
  rules.update(layernorm_rules('img/ln_pre', 'visual.ln_pre'))
  rules.update(torch_encoder_rules('img/Transformer', 'visual.transformer.resblocks',
                                   common.depth(config, 'image'), OPENAI_BLOCK))
  rules.update(layernorm_rules('img/Transformer/encoder_norm', 'visual.ln_post'))
  rules['img/head/kernel'] = Rule('visual.proj', SAME)  # Already [in, out]: used as x @ proj.
  rules['txt/Embed_0/embedding'] = Rule('token_embedding.weight')
  rules['txt/pos_embedding'] = Rule('positional_embedding', reshape_from(lambda t: t[1:]))
  rules.update(torch_encoder_rules('txt/Encoder_0', 'transformer.resblocks', common.depth(config, 'text'),
                                   OPENAI_BLOCK))
  rules.update(layernorm_rules('txt/Encoder_0/encoder_norm', 'ln_final'))
  rules['txt/head/kernel'] = Rule('text_projection', SAME)
  rules['t'] = Rule('logit_scale', reshape_from(lambda t: ()))
  if 'logit_bias' in source:
    rules['b'] = Rule('logit_bias', reshape_from(lambda t: ()))
  return rules
