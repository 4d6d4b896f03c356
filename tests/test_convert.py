"""Weight converters: tiny random transformers CLIPModel / SiglipModel (and the same weights in OpenAI and
big_vision layouts) and a tiny open_clip-layout torch CLIP converted to vitclip must give the reference image /
text embeddings and logits (fp32, atol 1e-4); the tokenizers must give the ids of the source's tokenizer. The
converted config.json laid over configs/base.py must be configs/base.py with exactly the source's fields, and
every bad input must stop the CLI with one 'Error:' line and status 2.

Needs the optional converter dependencies (requirements-convert.txt); skipped without them. Nothing downloads:
the CLIP BPE merges and the SentencePiece model are trained here on a few sentences, and OpenAI's merges file
is written in its published layout (tests/test_tokenizer_files.py).
"""

import builtins
import collections
import io
import json
import math
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
safetensors_torch = pytest.importorskip('safetensors.torch')

from configs import base  # pylint: disable=g-import-not-at-top
from vitclip import checkpoint, config as config_lib, tokenizer as tokenizer_lib
from vitclip.convert import ConvertError, convert
from vitclip.convert.__main__ import main as convert_main
from vitclip.models import build_model
from tests import test_tokenizer_files as tokenizer_files

ATOL = 1e-4
IMAGE, PATCH, WIDTH, MLP, HEADS, DEPTH, MAX_LEN = 32, 8, 32, 64, 2, 2, 12  # vitclip 'micro/8' towers.
CORPUS = ['a photo of a cat', 'a photo of the dog', "it's a diagram of 3 shapes", 'grün café naïve',
          'two red triangles and a blue square', 'the quick brown fox jumps over the lazy dog',
          'a small green circle above a large yellow star', 'an orange diamond left of a purple cross']
# Tokenizer corner cases: case, whitespace runs, contractions, punctuation, unicode, empty, over-long text.
TRICKY = ['a photo of a cat', 'A  PHOTO\tof\n the Dog!!', "it's won't I'LL", 'Grün café naïve ☃ 日本語', '',
          '   ', 'x' * 50, 'the quick brown fox jumps over the lazy dog ' * 3, 'e\u0301 é', '123,456.7 $%^&*()',
          'a — b “quoted” ¿qué?', '<|endoftext|> hi']


def _tower_kwargs(depth=DEPTH, mlp=MLP, **text):
  common = dict(hidden_size=WIDTH, intermediate_size=mlp, num_hidden_layers=depth, num_attention_heads=HEADS)
  return dict(vision_config=dict(common, image_size=IMAGE, patch_size=PATCH),
              text_config=dict(common, max_position_embeddings=MAX_LEN, **text))


def _randomize(model, seed: int):
  """Random weights everywhere (LayerNorm scales/biases and logit scale/bias too), so every mapping matters."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(p + 0.2 * torch.randn(p.shape, generator=gen))
  return model.eval()


def _images(n=3):
  """float32 [n, IMAGE, IMAGE, 3] (vitclip's layout; transformers takes NCHW)."""
  return np.random.default_rng(0).normal(size=(n, IMAGE, IMAGE, 3)).astype(np.float32)


def _reference(model, input_ids):
  """transformers' normalised image / text embeddings and logits_per_image, as numpy."""
  pixels = torch.from_numpy(_images().transpose(0, 3, 1, 2).copy())
  ids = torch.from_numpy(np.asarray(input_ids, np.int64))
  with torch.no_grad():
    out = model(input_ids=ids, pixel_values=pixels)
  return dict(zimg=out.image_embeds.numpy(), ztxt=out.text_embeds.numpy(), logits=out.logits_per_image.numpy())


def _load(out):
  """(config, tokenizer, params) of a converted directory, read back as eval / init_from read it: its
  config.json laid over configs/base.py."""
  config = config_lib.load_model_dir(out, base.get_config())
  tok = tokenizer_lib.Tokenizer.from_file(config.tokenizer.path, config.model.text.max_len)
  model = build_model(config.model)
  size, length = config.model.image.image_size, config.model.text.max_len
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32),
                                               np.zeros((1, length), np.int32))['params'])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)
  return config, tok, checkpoint.restore_params(out, abstract)


def _vitclip(out, texts):
  """vitclip's normalised embeddings and logits for `_images()` and `texts` tokenized by the converted
  tokenizer; also the ids."""
  config, tok, params = _load(out)
  ids = tok.encode(texts)
  zimg, ztxt, scale = jax.jit(build_model(config.model).apply)({'params': params}, _images(), ids)  # One compile.
  logits = scale['t'] * zimg @ ztxt.T + (0 if scale['b'] is None else scale['b'])
  return dict(zimg=np.asarray(zimg), ztxt=np.asarray(ztxt), logits=np.asarray(logits), ids=ids)


def _max_diffs(got, ref):
  return {k: float(np.max(np.abs(got[k] - ref[k]))) for k in ('zimg', 'ztxt', 'logits')}


def _assert_close(got, ref):
  diffs = _max_diffs(got, ref)
  assert max(diffs.values()) <= ATOL, diffs


def _assert_config(out, changes: dict):
  """DIR/config.json laid over configs/base.py is configs/base.py with exactly `changes` ('a.b' -> value) and
  the tokenizer path made absolute: what configs/pretrained.py:DIR gives."""
  expected = base.get_config()
  for key, value in changes.items():
    *parents, leaf = key.split('.')
    node = expected
    for p in parents:
      node = node[p]
    node[leaf] = value
  expected.tokenizer.path = os.path.join(os.path.abspath(out), expected.tokenizer.path)
  assert config_lib.load_model_dir(out, base.get_config()).to_dict() == expected.to_dict()


def _both_towers(**fields) -> dict:
  return {f'model.{tower}.{k}': v for tower in ('image', 'text') for k, v in fields.items()}


def _clip_changes(vocab_size, log_t, act, ln_eps, eos_id, pad_id):
  """configs/base.py fields a tiny CLIP conversion sets (both towers 'micro', projection 24)."""
  return {'model.embed_dim': 24, 'model.t_init': math.exp(float(log_t)), 'model.image.variant': 'micro/8',
          'model.image.image_size': IMAGE, 'model.image.ln_pre': True, 'model.image.patch_bias': False,
          **_both_towers(act=act, ln_eps=ln_eps), 'model.text.variant': 'micro', 'model.text.vocab_size': vocab_size,
          'model.text.max_len': MAX_LEN, 'model.text.eos_id': eos_id, 'model.text.pad_id': pad_id,
          'tokenizer.path': 'tokenizer.json', 'data.mean': (0.48145466, 0.4578275, 0.40821073),
          'data.std': (0.26862954, 0.26130258, 0.27577711)}


def _siglip_changes(log_t, b):
  """configs/base.py fields a tiny SigLIP conversion sets (MAP head output = the embedding, width 32)."""
  return {'model.embed_dim': WIDTH, 'model.t_init': math.exp(float(log_t)), 'model.b_init': float(b),
          'model.image.variant': 'micro/8', 'model.image.image_size': IMAGE, 'model.image.cls_token': False,
          'model.image.pool': 'map', 'model.image.head': 'none', 'model.image.head_bias': False,
          **_both_towers(act='gelu_tanh', ln_eps=1e-6), 'model.text.variant': 'micro', 'model.text.vocab_size': 60,
          'model.text.max_len': MAX_LEN,
          'model.text.causal': False, 'model.text.mask_pad': False, 'model.text.pool': 'final',
          'model.text.eos_id': 1, 'model.text.pad_id': 1, 'model.text.head_bias': True, 'loss.kind': 'sigmoid',
          'tokenizer.kind': 'sentencepiece', 'tokenizer.path': 'tokenizer.model'}


# ------------------------------------------------------------------------------------------------- CLIP


def _clip_merges():
  """BPE merges learned on CORPUS with CLIP's pre-tokenization ('</w>' word ends)."""
  from tokenizers import models, trainers
  tok = tokenizer_lib.clip_bpe({tokenizer_lib.CLIP_BOS: 0, tokenizer_lib.CLIP_EOS: 1}, [])
  tok.model = models.BPE(continuing_subword_prefix='', end_of_word_suffix='</w>')
  tok.train_from_iterator(CORPUS * 10, trainers.BpeTrainer(
      vocab_size=700, end_of_word_suffix='</w>', show_progress=False,
      initial_alphabet=list(tokenizer_lib.bytes_to_unicode().values())))
  merges = json.loads(tok.to_str())['model']['merges']
  return [tuple(m.split(' ')) if isinstance(m, str) else tuple(m) for m in merges]


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
  """A random tiny HF CLIPModel + CLIPTokenizer folder, its reference outputs, and the same weights as an
  OpenAI-layout state dict (safetensors and .pt) plus OpenAI's merges-only tokenizer file (as OpenAI ships
  it, gzipped with its header line)."""
  root = tmp_path_factory.mktemp('clip')
  merges = _clip_merges()
  vocab = tokenizer_lib.clip_vocab_from_merges(merges)  # OpenAI's rule: EOT is the largest id.
  folder = str(root / 'hf')
  model, hf_tok = _save_hf_clip(folder, merges, vocab, seed=0)
  eos = vocab[tokenizer_lib.CLIP_EOS]
  ids = hf_tok(TRICKY, padding='max_length', truncation=True, max_length=MAX_LEN)['input_ids']

  state = _openai_state_dict({k: v.numpy() for k, v in model.state_dict().items()})
  safetensors_torch.save_file({k: torch.from_numpy(v) for k, v in state.items()}, str(root / 'openai.safetensors'))
  torch.save({'state_dict': {f'module.{k}': torch.from_numpy(v) for k, v in state.items()}, 'epoch': 3},
             str(root / 'openai.pt'))
  tokenizer_files.write_openai_bpe(str(root / 'bpe.txt.gz'), merges)  # OpenAI's layout, header line included.
  return dict(root=root, folder=folder, ids=ids, ref=_reference(model, ids), state=state, vocab=vocab, eos=eos,
              merges=merges)


def _save_hf_clip(folder: str, merges, vocab: dict, seed: int, **sizes):
  """A random tiny HF CLIPModel (projection 24; `sizes`: depth, mlp) and its CLIPTokenizer saved to `folder`."""
  hf_tok = transformers.CLIPTokenizer(vocab=vocab, merges=merges)
  eos, bos = vocab[tokenizer_lib.CLIP_EOS], vocab[tokenizer_lib.CLIP_BOS]
  torch.manual_seed(seed)
  model = _randomize(transformers.CLIPModel(transformers.CLIPConfig(
      **_tower_kwargs(**sizes, vocab_size=len(vocab), eos_token_id=eos, bos_token_id=bos, pad_token_id=eos),
      projection_dim=24)), seed=seed)
  model.save_pretrained(folder)
  hf_tok.save_pretrained(folder)
  return model, hf_tok


def _openai_padding(ids):
  """HF CLIP ids (padded with EOS, the largest id) as OpenAI pads them: 0 after the appended EOS."""
  ids = np.array(ids)
  for row in ids:
    end = len(row)
    while end > 1 and row[end - 2] == row.max():  # The trailing run of EOS: the appended one, then pads.
      end -= 1
    row[end:] = 0
  return ids


def _openai_state_dict(hf):
  """HF CLIPModel weights renamed / fused into OpenAI's CLIP layout."""
  out = {}
  for tower, prefix in (('vision_model', 'visual.'), ('text_model', '')):
    for i in range(DEPTH):
      s, t = f'{tower}.encoder.layers.{i}.', f'{prefix}transformer.resblocks.{i}.'
      for kind in ('weight', 'bias'):
        out[t + f'attn.in_proj_{kind}'] = np.concatenate([hf[s + f'self_attn.{n}_proj.{kind}'] for n in 'qkv'])
        for src, dst in (('self_attn.out_proj', 'attn.out_proj'), ('layer_norm1', 'ln_1'), ('layer_norm2', 'ln_2'),
                         ('mlp.fc1', 'mlp.c_fc'), ('mlp.fc2', 'mlp.c_proj')):
          out[t + f'{dst}.{kind}'] = hf[s + f'{src}.{kind}']
    for kind in ('weight', 'bias'):
      out[f'visual.ln_pre.{kind}'] = hf[f'vision_model.pre_layrnorm.{kind}']
      out[f'visual.ln_post.{kind}'] = hf[f'vision_model.post_layernorm.{kind}']
      out[f'ln_final.{kind}'] = hf[f'text_model.final_layer_norm.{kind}']
  e = 'vision_model.embeddings.'
  out.update({'visual.conv1.weight': hf[e + 'patch_embedding.weight'],
              'visual.class_embedding': hf[e + 'class_embedding'],
              'visual.positional_embedding': hf[e + 'position_embedding.weight'],
              'visual.proj': hf['visual_projection.weight'].T,
              'token_embedding.weight': hf['text_model.embeddings.token_embedding.weight'],
              'positional_embedding': hf['text_model.embeddings.position_embedding.weight'],
              'text_projection': hf['text_projection.weight'].T,
              'logit_scale': hf['logit_scale']})
  return {k: np.array(v, order='C') for k, v in out.items()}


def test_hf_clip_matches_transformers(clip, tmp_path):
  config = convert(clip['folder'], str(tmp_path / 'out'))
  assert (config.loss.kind, config.model.image.act, config.model.image.ln_pre) == ('softmax', 'quick_gelu', True)
  got = _vitclip(str(tmp_path / 'out'), TRICKY)
  np.testing.assert_array_equal(got['ids'], clip['ids'])  # HF pads with its pad token (here EOS).
  _assert_close(got, clip['ref'])
  _assert_config(str(tmp_path / 'out'), _clip_changes(
      len(clip['vocab']), clip['state']['logit_scale'], 'quick_gelu', 1e-5, eos_id=clip['eos'], pad_id=clip['eos']))


@pytest.mark.parametrize('name', ['openai.safetensors', 'openai.pt'])
def test_openai_state_dict_matches_transformers(clip, tmp_path, name):
  out = str(tmp_path / 'out')
  convert(str(clip['root'] / name), out, tokenizer=str(clip['root'] / 'bpe.txt.gz'))
  got = _vitclip(out, TRICKY)
  np.testing.assert_array_equal(got['ids'], _openai_padding(clip['ids']))
  _assert_close(got, clip['ref'])
  # OpenAI pools at the largest id (eos_id=-1) and pads with 0.
  _assert_config(out, _clip_changes(len(clip['vocab']), clip['state']['logit_scale'], 'quick_gelu', 1e-5,
                                    eos_id=-1, pad_id=0))


def test_clip_tokenizer_sources_agree(clip, tmp_path):
  """tokenizer.json, vocab.json + merges.txt and OpenAI's merges-only file give HF's ids (pads aside)."""
  hf = np.asarray(clip['ids'])
  from_json = tokenizer_lib.Tokenizer.from_tokenizer(tokenizer_lib.load_clip_bpe(clip['folder']), MAX_LEN)
  np.testing.assert_array_equal(from_json.encode(TRICKY), hf)
  folder = tmp_path / 'vm'
  folder.mkdir()
  tok = json.loads(open(os.path.join(clip['folder'], 'tokenizer.json')).read())
  (folder / 'vocab.json').write_text(json.dumps(tok['model']['vocab']))
  merges = tok['model']['merges']
  (folder / 'merges.txt').write_text('#version: 0.2\n' + ''.join(
      (m if isinstance(m, str) else ' '.join(m)) + '\n' for m in merges))
  from_files = tokenizer_lib.Tokenizer.from_tokenizer(tokenizer_lib.load_clip_bpe(str(folder)), MAX_LEN)
  np.testing.assert_array_equal(from_files.encode(TRICKY), hf)
  openai = tokenizer_lib.Tokenizer.from_tokenizer(
      tokenizer_lib.load_clip_bpe(str(clip['root'] / 'bpe.txt.gz'), pad_id=0), MAX_LEN)
  ids = openai.encode(TRICKY)
  np.testing.assert_array_equal(ids, _openai_padding(hf))
  assert openai.decode(ids)[:2] == ['a photo of a cat', 'a photo of the dog !!']


# ----------------------------------------------------------------------------------------------- SigLIP


@pytest.fixture(scope='module')
def siglip(tmp_path_factory):
  """A random tiny HF SiglipModel + SiglipTokenizer folder (SentencePiece trained on CORPUS), its reference
  outputs, and the same weights as a big_vision npz (image blocks unrolled, text blocks scan-stacked)."""
  import sentencepiece
  root = tmp_path_factory.mktemp('siglip')
  model_file = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(  # SigLIP's ids: pad 0, EOS 1, unk 2, no BOS.
      sentence_iterator=iter(CORPUS * 20), model_writer=model_file, vocab_size=60, pad_id=0, eos_id=1, unk_id=2,
      bos_id=-1, character_coverage=1.0, minloglevel=2)
  sp_path = str(root / 'spiece.model')
  with open(sp_path, 'wb') as f:
    f.write(model_file.getvalue())
  hf_tok = transformers.SiglipTokenizer(vocab_file=sp_path, model_max_length=MAX_LEN)
  torch.manual_seed(1)
  model = _randomize(transformers.SiglipModel(transformers.SiglipConfig(
      **_tower_kwargs(vocab_size=60, eos_token_id=1, pad_token_id=1, bos_token_id=None))), seed=1)
  folder = str(root / 'hf')
  model.save_pretrained(folder)
  hf_tok.save_pretrained(folder)
  ids = hf_tok(TRICKY, padding='max_length', truncation=True, max_length=MAX_LEN)['input_ids']
  npz = str(root / 'siglip.npz')
  np.savez(npz, **{f'params/{k}': v for k, v in
                   _big_vision_params({k: v.numpy() for k, v in model.state_dict().items()}).items()})
  return dict(root=root, folder=folder, sp=sp_path, ids=ids, ref=_reference(model, ids), npz=npz,
              changes=_siglip_changes(model.logit_scale.item(), model.logit_bias.item()))


def _big_vision_params(hf):
  """HF SiglipModel weights in big_vision's names and layouts ('img/...', 'txt/...', 't', 'b')."""
  dense = lambda s: {'kernel': hf[f'{s}.weight'].T, 'bias': hf[f'{s}.bias']}
  norm = lambda s: {'scale': hf[f'{s}.weight'], 'bias': hf[f'{s}.bias']}
  heads = lambda w, b: ({'kernel': w.T.reshape(WIDTH, HEADS, -1), 'bias': b.reshape(HEADS, -1)})

  def attention(q, k, v, out):
    return {'query': heads(*q), 'key': heads(*k), 'value': heads(*v),
            'out': {'kernel': out[0].T.reshape(HEADS, -1, WIDTH), 'bias': out[1]}}

  def block(s):
    w = lambda n: (hf[f'{s}.self_attn.{n}.weight'], hf[f'{s}.self_attn.{n}.bias'])
    return {'LayerNorm_0': norm(f'{s}.layer_norm1'), 'LayerNorm_1': norm(f'{s}.layer_norm2'),
            'MultiHeadDotProductAttention_0': attention(w('q_proj'), w('k_proj'), w('v_proj'), w('out_proj')),
            'MlpBlock_0': {'Dense_0': dense(f'{s}.mlp.fc1'), 'Dense_1': dense(f'{s}.mlp.fc2')}}

  h = 'vision_model.head'
  qkv_w, qkv_b = np.split(hf[f'{h}.attention.in_proj_weight'], 3), np.split(hf[f'{h}.attention.in_proj_bias'], 3)
  img = {'embedding': {'kernel': hf['vision_model.embeddings.patch_embedding.weight'].transpose(2, 3, 1, 0),
                       'bias': hf['vision_model.embeddings.patch_embedding.bias']},
         'pos_embedding': hf['vision_model.embeddings.position_embedding.weight'][None],
         'Transformer': {**{f'encoderblock_{i}': block(f'vision_model.encoder.layers.{i}') for i in range(DEPTH)},
                         'encoder_norm': norm('vision_model.post_layernorm')},
         'MAPHead_0': {'probe': hf[f'{h}.probe'], 'LayerNorm_0': norm(f'{h}.layernorm'),
                       'MultiHeadDotProductAttention_0': attention(
                           *zip(qkv_w, qkv_b), (hf[f'{h}.attention.out_proj.weight'],
                                                hf[f'{h}.attention.out_proj.bias'])),
                       'MlpBlock_0': {'Dense_0': dense(f'{h}.mlp.fc1'), 'Dense_1': dense(f'{h}.mlp.fc2')}}}
  blocks = [block(f'text_model.encoder.layers.{i}') for i in range(DEPTH)]
  txt = {'Embed_0': {'embedding': hf['text_model.embeddings.token_embedding.weight']},
         'pos_embedding': hf['text_model.embeddings.position_embedding.weight'][None],
         'Encoder_0': {'encoderblock': jax.tree.map(lambda *a: np.stack(a), *blocks),  # scan layout
                       'encoder_norm': norm('text_model.final_layer_norm')},
         'head': dense('text_model.head')}
  tree = {'img': img, 'txt': txt, 't': hf['logit_scale'], 'b': hf['logit_bias']}
  return {'/'.join(str(k.key) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_hf_siglip_matches_transformers(siglip, tmp_path):
  config = convert(siglip['folder'], str(tmp_path / 'out'))
  assert (config.loss.kind, config.model.image.pool, config.model.text.pool) == ('sigmoid', 'map', 'final')
  got = _vitclip(str(tmp_path / 'out'), TRICKY)
  np.testing.assert_array_equal(got['ids'], siglip['ids'])
  _assert_close(got, siglip['ref'])
  _assert_config(str(tmp_path / 'out'), siglip['changes'])


def test_big_vision_npz_matches_transformers(siglip, tmp_path):
  out = str(tmp_path / 'out')
  convert(siglip['npz'], out, variant='micro/8', tokenizer=siglip['sp'])
  _assert_close(_vitclip(out, TRICKY), siglip['ref'])
  _assert_config(out, siglip['changes'])


# --------------------------------------------------------------------------------- open_clip torch model


class _ResidualAttentionBlock(torch.nn.Module):
  """clip/model.py's ResidualAttentionBlock (open_clip's is the same): pre-LN attention, then pre-LN MLP."""

  def __init__(self, attn_mask=None):
    super().__init__()
    self.attn = torch.nn.MultiheadAttention(WIDTH, HEADS)
    self.ln_1 = torch.nn.LayerNorm(WIDTH)
    self.mlp = torch.nn.Sequential(collections.OrderedDict([  # open_clip's default activation: exact GELU.
        ('c_fc', torch.nn.Linear(WIDTH, MLP)), ('gelu', torch.nn.GELU()), ('c_proj', torch.nn.Linear(MLP, WIDTH))]))
    self.ln_2 = torch.nn.LayerNorm(WIDTH)
    self.attn_mask = attn_mask  # A plain attribute, as in clip/model.py: not part of the state dict.

  def forward(self, x):
    """x: [L, N, W] (sequence first, nn.MultiheadAttention's default layout)."""
    y = self.ln_1(x)
    x = x + self.attn(y, y, y, need_weights=False, attn_mask=self.attn_mask)[0]
    return x + self.mlp(self.ln_2(x))


def _transformer(attn_mask=None) -> torch.nn.Module:
  t = torch.nn.Module()
  t.resblocks = torch.nn.Sequential(*[_ResidualAttentionBlock(attn_mask) for _ in range(DEPTH)])
  return t


class _OpenCLIP(torch.nn.Module):
  """clip/model.py's CLIP with a ViT image tower, in open_clip's key names; 'micro' towers, embedding 24."""

  def __init__(self, vocab_size: int):
    super().__init__()
    scale, grid = WIDTH ** -0.5, IMAGE // PATCH
    self.visual = v = torch.nn.Module()
    v.conv1 = torch.nn.Conv2d(3, WIDTH, PATCH, stride=PATCH, bias=False)
    v.class_embedding = torch.nn.Parameter(scale * torch.randn(WIDTH))
    v.positional_embedding = torch.nn.Parameter(scale * torch.randn(grid * grid + 1, WIDTH))
    v.ln_pre, v.transformer, v.ln_post = torch.nn.LayerNorm(WIDTH), _transformer(), torch.nn.LayerNorm(WIDTH)
    v.proj = torch.nn.Parameter(scale * torch.randn(WIDTH, 24))
    self.token_embedding = torch.nn.Embedding(vocab_size, WIDTH)
    self.positional_embedding = torch.nn.Parameter(0.01 * torch.randn(MAX_LEN, WIDTH))
    self.transformer = _transformer(torch.full((MAX_LEN, MAX_LEN), float('-inf')).triu(1))  # Causal.
    self.ln_final = torch.nn.LayerNorm(WIDTH)
    self.text_projection = torch.nn.Parameter(scale * torch.randn(WIDTH, 24))
    self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

  def encode_image(self, x):
    """x: [N, 3, H, W] -> [N, 24]: CLS token after ln_post, projected."""
    v = self.visual
    x = v.conv1(x).flatten(2).transpose(1, 2)  # [N, grid², W]
    x = torch.cat([v.class_embedding.expand(len(x), 1, -1), x], dim=1) + v.positional_embedding
    x = v.transformer.resblocks(v.ln_pre(x).transpose(0, 1)).transpose(0, 1)
    return v.ln_post(x[:, 0]) @ v.proj

  def encode_text(self, ids):
    """ids: [N, L] -> [N, 24]: the position of the largest id (EOT) after ln_final, projected."""
    x = self.token_embedding(ids) + self.positional_embedding
    x = self.ln_final(self.transformer.resblocks(x.transpose(0, 1)).transpose(0, 1))
    return x[torch.arange(len(ids)), ids.argmax(dim=-1)] @ self.text_projection


def test_open_clip_state_dict_with_openai_bpe_matches_torch(tmp_path, capfd):
  """`python -m vitclip.convert` of an open_clip state dict with OpenAI's gzipped merges file: OpenAI's ids
  and the torch model's embeddings and logits."""
  bpe = str(tmp_path / 'bpe_simple_vocab_16e6.txt.gz')
  # As OpenAI's file, it holds more merges than the model's vocabulary uses.
  tokenizer_files.write_openai_bpe(bpe, tokenizer_files.MERGES + tokenizer_files.EXTRA_MERGES)
  torch.manual_seed(2)
  model = _randomize(_OpenCLIP(tokenizer_files.VOCAB_SIZE), seed=2)
  src = str(tmp_path / 'open_clip_pytorch_model.bin')
  torch.save(model.state_dict(), src)
  out = str(tmp_path / 'out')
  assert convert_main([src, '--out', out, '--format', 'open_clip', '--tokenizer', bpe]) == 0, capfd.readouterr().err
  texts = tokenizer_files.TEXTS
  ids = tokenizer_files.OpenAITokenizer(bpe, len(tokenizer_files.MERGES)).tokenize(texts, MAX_LEN)
  with torch.no_grad():
    zimg = torch.nn.functional.normalize(model.encode_image(torch.from_numpy(_images().transpose(0, 3, 1, 2))))
    ztxt = torch.nn.functional.normalize(model.encode_text(torch.from_numpy(ids)))
    ref = dict(zimg=zimg.numpy(), ztxt=ztxt.numpy(), logits=(model.logit_scale.exp() * zimg @ ztxt.T).numpy())
  got = _vitclip(out, texts)
  np.testing.assert_array_equal(got['ids'], ids)
  _assert_close(got, ref)
  _assert_config(out, _clip_changes(tokenizer_files.VOCAB_SIZE, model.logit_scale.item(), 'gelu', 1e-5,
                                    eos_id=-1, pad_id=0))


# ------------------------------------------------------------------------------------------------ errors


def test_missing_key_names_the_key_and_shape(clip, tmp_path):
  state = dict(clip['state'])
  del state['visual.transformer.resblocks.1.attn.in_proj_weight']
  path = str(tmp_path / 'broken.safetensors')
  safetensors_torch.save_file({k: torch.from_numpy(v) for k, v in state.items()}, path)
  with pytest.raises(ConvertError, match=r"missing key 'visual\.transformer\.resblocks\.1\.attn\.in_proj_weight' "
                                         r'\(expected shape \(96, 32\)'):
    convert(path, str(tmp_path / 'out'), tokenizer=str(clip['root'] / 'bpe.txt.gz'))
  assert not os.path.exists(tmp_path / 'out')  # Nothing written.


def test_wrong_shape_and_wrong_variant_name_the_key(clip, siglip, tmp_path, capfd):
  state = dict(clip['state'])
  state['text_projection'] = np.ascontiguousarray(state['text_projection'][:, :20])
  path = str(tmp_path / 'broken.safetensors')
  safetensors_torch.save_file({k: torch.from_numpy(v) for k, v in state.items()}, path)
  with pytest.raises(ConvertError, match=r"key 'text_projection' has shape \(32, 20\), expected \(32, 24\)"):
    convert(path, str(tmp_path / 'a'), format='openai', tokenizer=str(clip['root'] / 'bpe.txt.gz'))
  state = {**clip['state'], 'visual.extra.weight': np.zeros(3, np.float32)}
  safetensors_torch.save_file({k: torch.from_numpy(v) for k, v in state.items()}, path)
  with pytest.raises(ConvertError, match=r"unexpected key 'visual\.extra\.weight' \(shape \(3,\)\)"):
    convert(path, str(tmp_path / 'a'), format='openai', tokenizer=str(clip['root'] / 'bpe.txt.gz'))
  # A wrong variant: the first array of the wrong size is named, with the shape the variant needs. (A one-block
  # variant: the converter traces the named model's shapes, which for B/16 alone took seconds.)
  err = _cli_error(capfd, siglip['npz'], '--out', str(tmp_path / 'b'), '--variant', 'mu/16', '--tokenizer',
                   siglip['sp'])
  assert "key 'img/embedding/kernel' has shape (8, 8, 3, 32), expected (16, 16, 3, 32)" in err


class _Opens:
  """Unpickling this creates the file `path`: it stands for any code a pickle can run."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return builtins.open, (self.path, 'w')


def _cli_error(capfd, *args) -> str:
  """Runs the converter's CLI on a bad input; it must exit with 2 and write one 'Error: ' line to stderr (file
  descriptor level, so library warnings would count too). Returns that line."""
  code = convert_main(list(args))
  err = capfd.readouterr().err
  assert code == 2 and err.startswith('Error: ') and err.count('\n') == 1, (code, err)
  return err.strip()


def test_bad_files_are_one_error_line(clip, siglip, tmp_path, capfd):
  """A cut download, pickled objects in an npz or a torch file, and a missing or damaged tokenizer file."""
  bpe, out, ran = str(clip['root'] / 'bpe.txt.gz'), str(tmp_path / 'out'), tmp_path / 'pickle_ran'
  data = (clip['root'] / 'openai.safetensors').read_bytes()
  cut = tmp_path / 'cut.safetensors'
  cut.write_bytes(data[:len(data) * 2 // 3])
  assert re.fullmatch(rf"Error: {re.escape(str(cut))}: truncated: key '[\w.]+' ends at byte \d+ of the data, "
                      r'which has \d+; download the file again\.', _cli_error(capfd, str(cut), '--out', out))

  npz = tmp_path / 'objects.npz'
  np.savez(npz, **{'params/img/embedding/kernel': np.array([_Opens(ran)], dtype=object)})
  assert _cli_error(capfd, str(npz), '--out', out, '--tokenizer', siglip['sp']) == (
      f"Error: {npz}: key 'params/img/embedding/kernel' is an object array (pickled Python objects); only "
      'numeric arrays are read, and nothing is unpickled.')

  pt = tmp_path / 'code.pt'
  torch.save({'state_dict': {**{k: torch.from_numpy(v) for k, v in clip['state'].items()}, 'x': _Opens(ran)}}, pt)
  assert _cli_error(capfd, str(pt), '--out', out, '--tokenizer', bpe) == (
      f'Error: {pt}: the pickle holds more than tensors and plain containers (Unsupported global: GLOBAL io.open), '
      'so torch.load(weights_only=True) refuses it and nothing in it is run; convert a state dict saved with '
      'safetensors from a copy you trust.')
  assert not ran.exists()

  safetensors = str(clip['root'] / 'openai.safetensors')
  missing = tmp_path / 'missing.txt.gz'
  assert _cli_error(capfd, safetensors, '--out', out, '--tokenizer', str(missing)) == (
      f'Error: {missing}: no such tokenizer file or directory.')
  damaged = tmp_path / 'damaged.txt.gz'
  damaged.write_bytes(open(bpe, 'rb').read()[:100])
  assert _cli_error(capfd, safetensors, '--out', out, '--tokenizer', str(damaged)) == (
      f'Error: {damaged}: unreadable or damaged (Compressed file ended before the end-of-stream marker was '
      'reached); expected a BPE merges file.')
  not_sp = tmp_path / 'spiece.model'
  not_sp.write_bytes(b'\n\x05hello\xff')
  assert _cli_error(capfd, siglip['npz'], '--out', out, '--tokenizer', str(not_sp)) == (
      f'Error: {not_sp}: not a SentencePiece model (a .model file).')
  assert not os.path.exists(out)


def test_cli_refuses_a_pickle_with_code_in_one_line(clip, tmp_path):
  """`python -m vitclip.convert` itself: status 2, one stderr line, no traceback, the pickle's code not run."""
  pt, ran = tmp_path / 'code.pt', tmp_path / 'pickle_ran'
  torch.save({'visual.conv1.weight': torch.zeros(1), 'x': _Opens(ran)}, pt)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, '-m', 'vitclip.convert', str(pt), '--out', str(tmp_path / 'out')],
                        cwd=root, capture_output=True, text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert done.returncode == 2 and done.stderr.startswith(f'Error: {pt}: the pickle holds') and (
      done.stderr.count('\n') == 1), done.stderr
  assert not ran.exists()


def test_converter_is_optional_for_the_rest_of_vitclip():
  """Training, evaluation and the converter's own modules never import torch or transformers; the library
  never imports the top-level configs/ package (importable here: the command runs in the repository root)."""
  code = ('import sys, vitclip.trainer, vitclip.evaluators, vitclip.convert.hf, '
          'vitclip.convert.openai, vitclip.convert.big_vision, vitclip.convert.__main__; '
          'assert "configs" not in sys.modules, "configs imported by vitclip"; import eval; '
          'bad = [m for m in ("torch", "transformers") if m in sys.modules]; assert not bad, bad')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, '-c', code], cwd=root, check=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def test_finetuning_starts_from_a_converted_hf_clip(clip, tiny_data_dir, tmp_path):
  """configs/finetune.py on a converted directory: classifier fine-tuning runs end to end with DIR's model,
  tokenizer and loss, its head started from the converted text tower, and reports the fine-tuned and the
  WiSE-FT alpha = 0 (zero-shot) top-1. (Contrastive training from a converted directory:
  tests/test_init_from.py::test_lit_run_from_a_converted_dir.)"""
  from configs import finetune
  from tests.tiny import override, tiny_config
  from vitclip import trainer
  # One block per tower (vitclip's 'mu'; the conversion of two blocks is checked above): nothing checked here
  # depends on the depth, and the classifier's train step and evaluators compile in far less time.
  src, out = str(tmp_path / 'hf'), str(tmp_path / 'out')
  _save_hf_clip(src, clip['merges'], clip['vocab'], seed=3, depth=1, mlp=128)
  convert(src, out)
  shapes = tiny_config(tiny_data_dir).data.shapes  # The tiny shapes world the other tests already generated.
  config = finetune.get_config(f'{out},shapes,method=classifier,steps=2,warmup=1,batch=16,lr=1e-4,templates=a {{}}.')
  override(config, **{'data.data_dir': tiny_data_dir, 'evals.batch_size': 32, 'ckpt_every': 2})
  config.data.shapes.update(shapes.to_dict())
  assert (config.init_from, config.loss.kind, config.model.image.act) == (out, 'softmax', 'quick_gelu')
  assert (config.model.image.variant, config.model.text.variant) == ('mu/8', 'mu')
  results = trainer.train(config, str(tmp_path / 'classifier'))
  assert set(results) >= {'classifier/shapes/top1', 'classifier/shapes/wise_0/top1'}
  assert all(0.0 <= v <= 1.0 for v in results.values())
