"""Hugging Face model folders (`config.json` + `model.safetensors`) of `CLIPModel` and `SiglipModel`.

The folder's config is read with transformers (local files only); the weights without torch. HF layout:
`{vision,text}_model.encoder.layers.{i}.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, fc2}`,
torch Linear weights [out, in], Conv2d [W, 3, p, p].
"""

import os

from vitclip import tokenizer as tokenizer_lib
from vitclip.convert import common, families
from vitclip.convert.common import (CONV, HF_BLOCK, SAME, ConvertError, Rule, Source, attention_rules,
                                    layernorm_rules, linear_rules, reshape_from, torch_encoder_rules)
from vitclip.convert.readers import read_hf_weights, read_json

# HF activation names -> vitclip's.
ACTIVATIONS = {'quick_gelu': 'quick_gelu', 'gelu': 'gelu', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu_new': 'gelu_tanh'}
IGNORE = r'position_ids$'  # Buffers older transformers versions saved.
MODEL_TYPES = ('clip', 'siglip')


def is_hf_folder(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, 'config.json'))


def load_config(folder: str):
  """The folder's transformers config (CLIPConfig / SiglipConfig)."""
  try:
    import transformers  # Optional: requirements-convert.txt.
  except ImportError:
    raise ConvertError('Converting a Hugging Face folder needs transformers (pip install -r '
                       'requirements-convert.txt).') from None
  raw = read_json(os.path.join(folder, 'config.json'))
  if raw.get('model_type') not in MODEL_TYPES:
    raise ConvertError(f'{folder}/config.json: model_type {raw.get("model_type")!r} is not supported; '
                       f'use one of {MODEL_TYPES} (CLIPModel, SiglipModel).')
  try:
    return transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
  except (OSError, ValueError, KeyError, TypeError) as e:  # A config.json transformers cannot read.
    raise ConvertError(f'{folder}/config.json: transformers cannot read it ({" ".join(str(e).split())}).') from None


def convert(folder: str, variant: str | None, tokenizer_path: str | None):
  """-> (vitclip config, params, tokenizer)."""
  hf = load_config(folder)
  source = Source(folder, read_hf_weights(folder), ignore=IGNORE)
  convert_family = _clip if hf.model_type == 'clip' else _siglip
  config, rules, tok = convert_family(folder, hf, source, variant, tokenizer_path)
  return config, common.assemble(config, source, rules), tok


def _sizes(hf, source: Source, variant: str | None, embed_dim: int, b_key: str | None) -> families.Sizes:
  """Tower variants from the configs (or `variant`, checked against the weights later)."""
  v, t = hf.vision_config, hf.text_config
  image_variant, text_variant = common.parse_variant(variant)
  if image_variant is None:
    size = common.find_variant(v.hidden_size, v.num_hidden_layers, v.intermediate_size, v.num_attention_heads,
                               'image tower')
    image_variant = f'{size}/{v.patch_size}'
    text_variant = common.find_variant(t.hidden_size, t.num_hidden_layers, t.intermediate_size,
                                       t.num_attention_heads, 'text tower')
  log_t = float(source.take('logit_scale', source.shape('logit_scale', 'the logit scale')).reshape(()))
  b = None if b_key is None else float(source.take(b_key, source.shape(b_key, 'the logit bias')).reshape(()))
  return families.Sizes(image_variant=image_variant, image_size=v.image_size, text_variant=text_variant,
                        vocab_size=t.vocab_size, max_len=t.max_position_embeddings, embed_dim=embed_dim,
                        log_t=log_t, b=b)


def _activation(tower) -> tuple[str, float]:
  """A transformers tower config -> (vitclip act, LayerNorm eps)."""
  if tower.hidden_act not in ACTIVATIONS:
    raise ConvertError(f'Activation {tower.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}.')
  return ACTIVATIONS[tower.hidden_act], tower.layer_norm_eps


def _set_activations(config, hf):
  """Each tower's activation and LayerNorm eps from its own HF config (they may differ)."""
  for tower, hf_tower in (('image', hf.vision_config), ('text', hf.text_config)):
    act, eps = _activation(hf_tower)
    config.model[tower].update(act=act, ln_eps=eps)
  return config


def _image_rules(patch_bias: bool) -> dict[str, Rule]:
  e = 'vision_model.embeddings'
  rules = {'img/embedding/kernel': Rule(f'{e}.patch_embedding.weight', CONV)}
  if patch_bias:
    rules['img/embedding/bias'] = Rule(f'{e}.patch_embedding.bias')
  return rules


def _encoder_rules(prefix: str, tower: str, encoder: str, depth: int, final_norm: str) -> dict[str, Rule]:
  rules = torch_encoder_rules(f'{prefix}/{encoder}', f'{tower}.encoder.layers', depth, HF_BLOCK)
  rules.update(layernorm_rules(f'{prefix}/{encoder}/encoder_norm', f'{tower}.{final_norm}'))
  return rules


def _text_rules(config) -> dict[str, Rule]:
  e = 'text_model.embeddings'
  rules = {'txt/Embed_0/embedding': Rule(f'{e}.token_embedding.weight'),
           'txt/pos_embedding': Rule(f'{e}.position_embedding.weight', reshape_from(lambda t: t[1:]))}
  rules.update(_encoder_rules('txt', 'text_model', 'Encoder_0', common.depth(config, 'text'),
                              'final_layer_norm'))
  return rules


def _clip(folder, hf, source, variant, tokenizer_path):
  tok = _clip_tokenizer(folder, tokenizer_path, hf.text_config.vocab_size, hf.text_config.max_position_embeddings)
  families.check_tokenizer(tok, hf.text_config.vocab_size, tokenizer_path or folder)
  eos = hf.text_config.eos_token_id
  if eos != 2 and eos != tok.eos_id:
    raise ConvertError(f'{folder}: text_config.eos_token_id={eos} but the tokenizer ends texts with id '
                       f'{tok.eos_id}; the model pools at the EOS token, so they must agree.')
  act, eps = _activation(hf.vision_config)
  mean, std = _image_stats(folder, families.OPENAI_MEAN, families.OPENAI_STD)
  # eos_token_id == 2 marks HF configs from before EOS pooling was fixed: they pool at the argmax of the ids.
  config = _set_activations(families.clip_config(
      _sizes(hf, source, variant, hf.projection_dim, None), act=act, ln_eps=eps, eos_id=-1 if eos == 2 else eos,
      pad_id=tok.pad_id, mean=mean, std=std), hf)
  e = 'vision_model.embeddings'
  rules = _image_rules(patch_bias=False)
  rules['img/cls'] = Rule(f'{e}.class_embedding', reshape_from(lambda t: t[-1:]))
  rules['img/pos_embedding'] = Rule(f'{e}.position_embedding.weight', reshape_from(lambda t: t[1:]))
  rules.update(layernorm_rules('img/ln_pre', 'vision_model.pre_layrnorm'))
  rules.update(_encoder_rules('img', 'vision_model', 'Transformer', common.depth(config, 'image'),
                              'post_layernorm'))
  rules.update(linear_rules('img/head', 'visual_projection', bias=False))
  rules.update(_text_rules(config))
  rules.update(linear_rules('txt/head', 'text_projection', bias=False))
  rules['t'] = Rule('logit_scale', reshape_from(lambda t: ()))
  return config, rules, tok


def _siglip(folder, hf, source, variant, tokenizer_path):
  v, t = hf.vision_config, hf.text_config
  projection = getattr(t, 'projection_size', None) or t.hidden_size
  if projection != v.hidden_size:
    raise ConvertError(f'{folder}: the text projection ({projection}) differs from the image width '
                       f'({v.hidden_size}); SigLIP compares the MAP-head output with the projected text.')
  if not getattr(v, 'vision_use_head', True):
    raise ConvertError(f'{folder}: vision_use_head=False (no MAP head) is not supported.')
  tok = _siglip_tokenizer(folder, tokenizer_path, t.max_position_embeddings)
  families.check_tokenizer(tok, t.vocab_size, tokenizer_path or folder)
  config = _set_activations(families.siglip_config(
      _sizes(hf, source, variant, v.hidden_size, 'logit_bias'), eos_id=tok.eos_id, pad_id=tok.pad_id), hf)
  rules = _image_rules(patch_bias=True)
  rules['img/pos_embedding'] = Rule('vision_model.embeddings.position_embedding.weight',
                                    reshape_from(lambda t: t[1:]))
  rules.update(_encoder_rules('img', 'vision_model', 'Transformer', common.depth(config, 'image'),
                              'post_layernorm'))
  h, m = 'vision_model.head', 'img/MAPHead_0'
  rules[f'{m}/probe'] = Rule(f'{h}.probe', SAME)
  rules.update(attention_rules(f'{m}/MultiHeadDotProductAttention_0', '', '', '', f'{h}.attention.out_proj',
                               qkv=f'{h}.attention.in_proj'))
  rules.update(layernorm_rules(f'{m}/LayerNorm_0', f'{h}.layernorm'))
  rules.update(linear_rules(f'{m}/MlpBlock_0/Dense_0', f'{h}.mlp.fc1'))
  rules.update(linear_rules(f'{m}/MlpBlock_0/Dense_1', f'{h}.mlp.fc2'))
  rules.update(_text_rules(config))
  rules.update(linear_rules('txt/head', 'text_model.head'))
  rules['t'] = Rule('logit_scale', reshape_from(lambda t: (1,)))
  rules['b'] = Rule('logit_bias', reshape_from(lambda t: (1,)))
  return config, rules, tok


def _image_stats(folder: str, mean, std):
  """Image mean / std from preprocessor_config.json when the folder has one."""
  path = os.path.join(folder, 'preprocessor_config.json')
  if not os.path.exists(path):
    return mean, std
  pre = read_json(path)
  return tuple(pre.get('image_mean', mean)), tuple(pre.get('image_std', std))


def _clip_tokenizer(folder: str, path: str | None, vocab_size: int, max_len: int) -> tokenizer_lib.Tokenizer:
  """The folder's CLIP BPE (tokenizer.json or vocab.json + merges.txt) or `path`; pads with the folder's
  pad token (HF: '<|endoftext|>' for OpenAI's models, '!' = 0 for some others)."""
  tok = tokenizer_lib.load_clip_bpe(path or folder, vocab_size)
  pad = _special_token(folder, 'pad_token')
  pad_id = None if pad is None else tok.token_to_id(pad)
  if pad_id is not None:
    tok.enable_padding(pad_id=pad_id, pad_token=pad)
  return tokenizer_lib.Tokenizer.from_tokenizer(tok, max_len, name=path or folder)


def _siglip_tokenizer(folder: str, path: str | None, max_len: int) -> tokenizer_lib.SentencePieceTokenizer:
  path = path or os.path.join(folder, 'spiece.model')
  if not os.path.exists(path):
    raise ConvertError(f'{folder}: no spiece.model; pass the SigLIP SentencePiece model (--tokenizer).')
  settings = os.path.join(folder, 'tokenizer_config.json')
  if os.path.exists(settings) and not read_json(settings).get('do_lower_case', True):
    raise ConvertError(f'{settings}: do_lower_case=False is not supported (vitclip lowercases like SigLIP).')
  return tokenizer_lib.SentencePieceTokenizer.from_file(path, max_len)


def _special_token(folder: str, name: str) -> str | None:
  for file in ('special_tokens_map.json', 'tokenizer_config.json'):
    path = os.path.join(folder, file)
    if os.path.exists(path):
      value = read_json(path).get(name)
      if value is not None:
        return value['content'] if isinstance(value, dict) else value
  return None
