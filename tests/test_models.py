"""Tests of vitclip.models: shapes, published param counts, scan/remat equivalence, masking and pooling,
dense-feature modes against an independent numpy reference, dtypes, position-embedding resizing, t/b init."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from configs import base
from tests.tiny import override
from vitclip.models import TextTransformer, VisionTransformer, build_model, count_params
from vitclip.models.layers import Encoder, EncoderBlock
from vitclip.models.variants import decode_variant
from vitclip.models.vit import resize_posemb

IMG = 16  # Micro images: 16x16 pixels, patch 4 -> a 4x4 grid.
LEN = 8
VOCAB = 50
EOS, PAD = 2, 0
DENSE_MODES = ('none', 'maskclip', 'reduced', 'sclip', 'clearclip')


def micro_config(**overrides):
  """config.model of a micro two-tower model (32 wide, 2 deep)."""
  c = base.get_config().model
  c.embed_dim = 24
  c.image.variant, c.image.image_size = 'micro/4', IMG
  c.text.variant, c.text.vocab_size, c.text.max_len = 'micro', VOCAB, LEN
  c.text.eos_id, c.text.pad_id = EOS, PAD
  return override(c, **overrides)


def vit(**kw):
  return VisionTransformer(**{'variant': 'micro/4', 'image_size': IMG, 'embed_dim': 24, **kw})


def text_tower(**kw):
  return TextTransformer(**{'variant': 'micro', 'vocab_size': VOCAB, 'max_len': LEN, 'eos_id': EOS,
                            'pad_id': PAD, 'embed_dim': 24, **kw})


def images(batch=2, size=IMG, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, size, size, 3)), jnp.float32)


def tokens(rows):
  """Rows of ids, padded with PAD to LEN -> int32 [B, LEN]."""
  return jnp.asarray([list(r) + [PAD] * (LEN - len(r)) for r in rows], jnp.int32)


TOKENS = tokens([[1, 5, 7, 9, EOS], [1, 11, 12, 13, 14, 15, 16, EOS]])


def init(model, *args, seed=0):
  """Random params of the model's shapes, drawn in numpy: tests compare functions, not initializers, and
  skipping the jitted initializers keeps the file fast on CPU."""
  shapes = jax.eval_shape(lambda r, *a: model.init(r, *a), jax.random.key(0), *args)['params']
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    x = rng.normal(size=shape.shape) * 0.2
    return jnp.asarray(x + 1 if path[-1].key == 'scale' else x, jnp.float32)  # LayerNorm scales near 1.
  return jax.tree_util.tree_map_with_path(draw, shapes)


def stack_blocks(params):
  """Per-layer params {'encoderblock_0': p0, ...} -> scan params {'encoderblock': stacked}, recursively."""
  if not isinstance(params, dict):
    return params
  if 'encoderblock_0' in params:
    n = sum(k.startswith('encoderblock_') for k in params)
    blocks = [params[f'encoderblock_{i}'] for i in range(n)]
    rest = {k: v for k, v in params.items() if not k.startswith('encoderblock_')}
    return {**rest, 'encoderblock': jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}
  return {k: stack_blocks(v) for k, v in params.items()}


def close(a, b, tol=1e-5):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=tol, rtol=tol)


# ----------------------------------------------------------------------------------------- two-tower model


def test_two_tower_shapes_and_unit_norms():
  model = build_model(micro_config())
  params = init(model, images(), TOKENS)
  assert set(params) == {'img', 'txt', 't'}

  @jax.jit
  def embed(p):
    return (model.apply({'params': p}, images(), TOKENS), model.apply({'params': p}, images(), method='encode_image'),
            model.apply({'params': p}, TOKENS, method='encode_text'))
  (zimg, ztxt, extras), zimg2, ztxt2 = embed(params)
  assert zimg.shape == ztxt.shape == (2, 24) and zimg.dtype == ztxt.dtype == jnp.float32
  close(jnp.linalg.norm(zimg, axis=-1), 1.)
  close(jnp.linalg.norm(ztxt, axis=-1), 1.)
  assert extras['b'] is None  # No bias param; None is an empty pytree node, so jit returns it as is.
  close(zimg2, zimg)
  close(ztxt2, ztxt)


def test_logit_scale_and_bias_init():
  logit_params = lambda model: model.init(jax.random.key(0), method=lambda m: m.log_t)['params']  # t, b only.
  clip = logit_params(build_model(micro_config()))
  assert set(clip) == {'t'}
  close(clip['t'], math.log(1 / 0.07))
  model = build_model(micro_config(t_init=10.0, b_init=-10.0))
  siglip = logit_params(model)
  close(siglip['t'], math.log(10.))
  close(siglip['b'], -10.)
  zimg, ztxt, extras = model.apply({'params': siglip}, None, None)  # Towers skipped.
  assert zimg is None and ztxt is None
  close(extras['t'], 10.)
  close(extras['b'], -10.)


# ------------------------------------------------------------------------------------------- param counts


def abstract_count(model, *args) -> int:
  return count_params(jax.eval_shape(lambda r, *a: model.init(r, *a), jax.random.key(0), *args)['params'])


def image_count(variant, size=224, **kw):
  width = decode_variant(variant)['width']
  model = VisionTransformer(variant=variant, image_size=size, head='none', embed_dim=width, scan=True, **kw)
  return abstract_count(model, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))


@pytest.mark.parametrize('variant,kw,published', [
    ('B/16', {}, 85.8e6),  # ViT paper / big_vision.
    ('L/16', {}, 304e6),
    ('So400m/14', dict(cls_token=False, pool='map'), 428e6),  # SigLIP So400m/14.
])
def test_image_tower_param_counts(variant, kw, published):
  assert abs(image_count(variant, **kw) / published - 1) < 0.005


def test_siglip_so400m_384_exact_count():
  # HF google/siglip-so400m-patch14-384 vision tower: 428,225,600 (27x27 patches: 384 px with patch 14).
  assert image_count('So400m/14', 384, cls_token=False, pool='map') == 428_225_600


def test_openai_clip_b16_layout_exact_count():
  c = micro_config(embed_dim=512, scan=True)
  c.image.update(variant='B/16', image_size=224, ln_pre=True, patch_bias=False, act='quick_gelu', ln_eps=1e-5)
  c.text.update(variant='M', vocab_size=49408, max_len=77, act='quick_gelu', ln_eps=1e-5, eos_id=-1)
  count = abstract_count(build_model(c), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32),
                         jax.ShapeDtypeStruct((1, 77), jnp.int32))
  assert count == 149_620_737  # OpenAI ViT-B/16, logit_scale included.


# ------------------------------------------------------------------------------------ scan / remat / dtype


def test_scan_matches_layer_stack_image():
  plain, scanned = vit(ln_pre=True), vit(ln_pre=True, scan=True)
  params = init(plain, images())
  stacked = stack_blocks(params)
  assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, init(scanned, images()))
  close(scanned.apply({'params': stacked}, images()), plain.apply({'params': params}, images()))
  # Dense features re-run the last block of the stack in another mode.
  close(scanned.apply({'params': stacked}, images(), 'maskclip', method='dense_features'),
        plain.apply({'params': params}, images(), 'maskclip', method='dense_features'))


def test_scan_matches_layer_stack_text():
  plain, scanned = text_tower(), text_tower(scan=True)
  params = init(plain, TOKENS)
  close(scanned.apply({'params': stack_blocks(params)}, TOKENS), plain.apply({'params': params}, TOKENS))


def test_encoder_returns_last_block_input():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 32)), jnp.float32)
  encoder = Encoder(depth=2, num_heads=2, mlp_dim=64)
  params = init(encoder, x)
  out, last_input = encoder.apply({'params': params}, x, return_last_input=True)
  first = EncoderBlock(num_heads=2, mlp_dim=64).apply({'params': params['encoderblock_0']}, x)
  close(last_input, first)
  close(out, encoder.apply({'params': params}, x))
  out_s, last_s = Encoder(depth=2, num_heads=2, mlp_dim=64, scan=True).apply(
      {'params': stack_blocks(params)}, x, return_last_input=True)
  close(out_s, out)
  close(last_s, last_input)


def test_remat_same_outputs_and_grads():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 32)), jnp.float32)
  params = init(Encoder(depth=1, num_heads=2, mlp_dim=64), x)

  @jax.jit  # One compilation for the three variants; one block keeps it small.
  def losses_and_grads(params, x):
    def loss_and_grad(scan=False, **kw):
      encoder = Encoder(depth=1, num_heads=2, mlp_dim=64, scan=scan, **kw)
      fn = lambda p, x: jnp.sum(jnp.sin(encoder.apply({'params': stack_blocks(p) if scan else p}, x)))
      return jax.value_and_grad(fn, argnums=(0, 1))(params, x)
    return [loss_and_grad(), loss_and_grad(remat_policy='full'), loss_and_grad(remat_policy='dots', scan=True)]
  (loss, grads), *remats = losses_and_grads(params, x)
  for loss_r, grads_r in remats:
    close(loss_r, loss)
    jax.tree.map(close, grads_r, grads)


def test_chunked_attention_and_mlp_same_outputs_and_grads():
  """Attention queries and MLP tokens in chunks of at most 5 (17 tokens: 4 chunks of 5, 3 padded) give the
  encoder's output and gradients (params and input) of all tokens at once: without a mask and with a causal
  one, under remat, plain and scanned. Chunking keeps the param tree (init with chunks = init without)."""
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 17, 32)), jnp.float32)
  causal = jnp.tril(jnp.ones((17, 17), bool))[None, None]
  params = init(Encoder(depth=1, num_heads=2, mlp_dim=64), x)
  chunked = init(Encoder(depth=1, num_heads=2, mlp_dim=64, attention_chunk=5, mlp_chunk=5), x)
  assert jax.tree.map(jnp.shape, chunked) == jax.tree.map(jnp.shape, params)

  @jax.jit
  def losses_and_grads(params, x):
    def loss_and_grad(mask, scan=False, **kw):
      encoder = Encoder(depth=1, num_heads=2, mlp_dim=64, remat_policy='full', scan=scan, **kw)
      fn = lambda p, x: jnp.sum(jnp.sin(encoder.apply({'params': stack_blocks(p) if scan else p}, x, mask)))
      return jax.value_and_grad(fn, argnums=(0, 1))(params, x)
    return [(loss_and_grad(m), loss_and_grad(m, attention_chunk=5, mlp_chunk=5)) for m in (None, causal)] + [
        (loss_and_grad(None), loss_and_grad(None, scan=True, mlp_chunk=5))]
  for (loss, grads), (loss_c, grads_c) in losses_and_grads(params, x):
    close(loss_c, loss)
    jax.tree.map(close, grads_c, grads)


def test_bfloat16_compute_float32_params():
  model = build_model(micro_config(dtype='bfloat16'))
  params = init(model, images(), TOKENS)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  zimg, ztxt, _ = jax.jit(lambda p: model.apply({'params': p}, images(), TOKENS))(params)
  z32, t32, _ = build_model(micro_config()).apply({'params': params}, images(), TOKENS)
  assert zimg.dtype == jnp.float32 and np.isfinite(np.asarray(zimg)).all() and np.isfinite(np.asarray(ztxt)).all()
  close(zimg, z32, tol=0.1)
  close(ztxt, t32, tol=0.1)


def test_bad_options_raise_clear_errors():
  with pytest.raises(ValueError, match='cls_token'):
    init(vit(cls_token=False, pool='tok'), images())
  with pytest.raises(ValueError, match='embed_dim'):
    init(vit(head='none'), images())
  with pytest.raises(ValueError, match='remat_policy'):
    init(vit(remat_policy='some'), images())
  with pytest.raises(ValueError, match='max_len'):
    init(text_tower(), jnp.zeros((1, LEN + 1), jnp.int32))
  with pytest.raises(ValueError, match='power-of-two patch size'):
    init(VisionTransformer(variant='micro/6', image_size=12, embed_dim=24, stem='conv'), images(size=12))
  with pytest.raises(ValueError, match="stem 'conf'"):
    init(vit(stem='conf'), images())


# ------------------------------------------------------------------------------------ text masking, pooling


def test_causal_tokens_do_not_see_later_tokens():
  # 'first' pooling reads position 0: causal -> independent of every later token, bidirectional -> not.
  changed = TOKENS.at[:, 1:].set(7)
  for causal in (True, False):
    model = text_tower(causal=causal, pool='first', pad_id=-1)
    params = init(model, TOKENS)
    same = np.allclose(model.apply({'params': params}, TOKENS), model.apply({'params': params}, changed))
    assert same == causal


def test_eos_pooling_reads_the_eos_position():
  model = text_tower(pool='eos')
  params = init(model, TOKENS)
  out = model.apply({'params': params}, TOKENS)
  # Same as pooling the last non-pad position (here the EOS token) with the same params.
  close(out, text_tower(pool='last').apply({'params': params}, TOKENS))
  # Causal: tokens after EOS (here: non-pad junk) do not change it.
  junk = TOKENS.at[0, 5:].set(9)
  close(model.apply({'params': params}, junk), out)
  # eos_id=-1: OpenAI's argmax of ids; make EOS the largest id.
  argmax = text_tower(pool='eos', eos_id=-1)
  with_max = jnp.where(TOKENS == EOS, VOCAB - 1, TOKENS)
  close(argmax.apply({'params': params}, with_max),
        text_tower(pool='eos', eos_id=VOCAB - 1).apply({'params': params}, with_max))


def test_bidirectional_masks_padding():
  # Pad keys are masked (and 'mean' skips pads): the pad token's embedding cannot change the output.
  # (A random shift: a constant one would vanish in the LayerNorms.)
  shift = jnp.asarray(np.random.default_rng(2).normal(size=32), jnp.float32)
  for pool in ('mean', 'map'):
    model = text_tower(causal=False, pool=pool)
    params = init(model, TOKENS)
    table = params['Embed_0']['embedding']
    moved = {**params, 'Embed_0': {'embedding': table.at[PAD].add(shift)}}
    close(model.apply({'params': moved}, TOKENS), model.apply({'params': params}, TOKENS))
  # Control: the causal tower's EOS pooling also never sees the pads that follow EOS.
  model = text_tower()
  params = init(model, TOKENS)
  moved = {**params, 'Embed_0': {'embedding': params['Embed_0']['embedding'].at[PAD].add(shift)}}
  close(model.apply({'params': moved}, TOKENS), model.apply({'params': params}, TOKENS))
  # Without a pad mask the same change shows up.
  model = text_tower(causal=False, pool='first', pad_id=-1)
  assert not np.allclose(model.apply({'params': moved}, TOKENS), model.apply({'params': params}, TOKENS))


@pytest.mark.parametrize('pool', ['eos', 'last', 'first', 'mean', 'map'])
def test_text_pool_modes(pool):
  model = text_tower(pool=pool)
  out = model.apply({'params': init(model, TOKENS)}, TOKENS[:, :6])  # L < max_len uses a posemb slice.
  assert out.shape == (2, 24) and np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize('pool,cls,posemb', [('tok', True, 'learn'), ('gap', False, 'sincos2d'),
                                             ('map', False, 'learn'), ('gap', True, 'learn')])
def test_image_pool_modes(pool, cls, posemb):
  model = vit(pool=pool, cls_token=cls, posemb=posemb)
  params = init(model, images())
  assert ('cls' in params) == cls and ('pos_embedding' in params) == (posemb == 'learn')
  assert model.apply({'params': params}, images()).shape == (2, 24)
  assert model.apply({'params': params}, images(), method='dense_features').shape == (2, 4, 4, 24)


# ----------------------------------------------------------------------------------------- dense features


def test_dense_modes_shapes_and_norms():
  model = build_model(micro_config(**{'image.pool': 'map'}))
  params = init(model, images(), TOKENS)
  feats = {mode: model.apply({'params': params}, images(), mode, method='dense_image_features')
           for mode in DENSE_MODES}
  for f in feats.values():
    assert f.shape == (2, 4, 4, 24)
    close(jnp.linalg.norm(f, axis=-1), 1.)
  assert not np.allclose(feats['maskclip'], feats['none'], atol=1e-3)


def test_posemb_resized_for_other_resolutions():
  model = vit()
  params = init(model, images())
  assert params['pos_embedding'].shape == (1, 1 + 16, 32)
  rect = images(size=32)[:, :24]  # 24 x 32 pixels -> a 6 x 8 grid.
  assert model.apply({'params': params}, rect).shape == (2, 24)
  assert model.apply({'params': params}, rect, 'maskclip', method='dense_features').shape == (2, 6, 8, 24)
  # Bilinear over the grid: a grid that is linear in the row index stays linear.
  grid = jnp.broadcast_to(jnp.arange(4.)[:, None, None], (4, 4, 3)).reshape(1, 16, 3)
  resized = np.asarray(resize_posemb(grid, 8, 8)).reshape(8, 8, 3)
  close(resized[:, 0, 0], np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3))  # Half-pixel centres, edges clamped.
  assert resize_posemb(grid, 4, 4) is grid


# --------------------------------------------------------- independent numpy reference of a micro ViT


def np_layernorm(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p['scale'] + p['bias']


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_block(x, p, eps, mode='standard', mask=None):
  """One pre-LN block in float64. Dense modes change the last block (MaskCLIP, SCLIP, ClearCLIP papers).
  mask: bool [L, L], True = may attend (None: everywhere)."""
  a = p['MultiHeadDotProductAttention_0']
  proj = lambda y, name: np.einsum('blw,whd->blhd', y, a[name]['kernel']) + a[name]['bias']
  allowed = np.ones((x.shape[1],) * 2, bool) if mask is None else mask
  attend = lambda s, t, v: np.einsum('bhqk,bkhd->bqhd', np_softmax(np.where(
      allowed, np.einsum('bqhd,bkhd->bhqk', s, t) / np.sqrt(s.shape[-1]), -np.inf)), v)
  y = np_layernorm(x, p['LayerNorm_0'], eps)
  q, k, v = proj(y, 'query'), proj(y, 'key'), proj(y, 'value')
  mixed = {
      'standard': lambda: attend(q, k, v),
      'maskclip': lambda: v,  # Each token takes its own value: no q-k attention.
      'reduced': lambda: v,
      'sclip': lambda: attend(q, q, v) + attend(k, k, v),
      'clearclip': lambda: attend(q, q, v),
  }[mode]()
  attn = np.einsum('blhd,hdw->blw', mixed, a['out']['kernel']) + a['out']['bias']
  if mode in ('clearclip', 'reduced'):  # No residual, no MLP.
    return attn
  x = x + attn
  m = p['MlpBlock_0']
  h = np_layernorm(x, p['LayerNorm_1'], eps) @ m['Dense_0']['kernel'] + m['Dense_0']['bias']
  h = 0.5 * h * (1 + erf(h / np.sqrt(2)))  # Exact GELU.
  return x + h @ m['Dense_1']['kernel'] + m['Dense_1']['bias']


def np_conv3x3_stride2(x, p):
  """[B, H, W, C] -> [B, H / 2, W / 2, C']: out[i, j] = sum_{a, b} pad(x)[2i + a, 2j + b] @ kernel[a, b]."""
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1] // 2, x.shape[2] // 2
  return sum(xp[:, a:a + 2 * h:2, c:c + 2 * w:2] @ p['kernel'][a, c] for a in range(3) for c in range(3)) + p['bias']


def np_vit_tokens(params, imgs, patch, eps, dense_mode, radius=0):
  """Micro ViT with cls, learned posemb, ln_pre, optional registers, float64: images -> (final-normed tokens
  [B, 1 + R + N, W], head params, keys of the last block [B, 1 + R + N, W]). radius > 0: patch tokens attend
  to patch tokens at most `radius` grid steps away in each direction (CLS and registers: everywhere)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(imgs, np.float64)
  if 'stem_conv0' in p:  # ViTc stem: stride-2 3x3 convs (zero padding 1) + LayerNorm + GELU, then a 1x1 conv.
    for i in range(patch.bit_length() - 1):
      x = np_conv3x3_stride2(x, p[f'stem_conv{i}'])
      x = np_layernorm(x, p[f'stem_norm{i}'], eps)
      x = 0.5 * x * (1 + erf(x / np.sqrt(2)))
    patch = 1
  b, h, w, c = x.shape
  x = x.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  x = np.einsum('bhwijc,ijcd->bhwd', x, p['embedding']['kernel']) + p['embedding']['bias']
  x = x.reshape(b, -1, x.shape[-1])
  x = np.concatenate([np.broadcast_to(p['cls'], (b, 1, x.shape[-1])), x], axis=1) + p['pos_embedding']
  if 'registers' in p:  # After the CLS token, without position embedding.
    regs = np.broadcast_to(p['registers'], (b, *p['registers'].shape[1:]))
    x = np.concatenate([x[:, :1], regs, x[:, 1:]], axis=1)
  x = np_layernorm(x, p['ln_pre'], eps)
  mask = None
  if radius:
    g = math.isqrt(p['pos_embedding'].shape[1] - 1)
    mask = np.ones((x.shape[1],) * 2, bool)
    start = x.shape[1] - g * g  # CLS and registers come first.
    for i in range(g * g):
      for j in range(g * g):
        mask[start + i, start + j] = max(abs(i // g - j // g), abs(i % g - j % g)) <= radius
  enc = p['Transformer']
  depth = sum(k.startswith('encoderblock_') for k in enc)
  for i in range(depth - 1):
    x = np_block(x, enc[f'encoderblock_{i}'], eps, mask=mask)
  last = enc[f'encoderblock_{depth - 1}']
  key = last['MultiHeadDotProductAttention_0']['key']
  keys = np.einsum('blw,whd->blhd', np_layernorm(x, last['LayerNorm_0'], eps), key['kernel']) + key['bias']
  x = np_block(x, last, eps, dense_mode, mask)
  return np_layernorm(x, enc['encoder_norm'], eps), p['head'], keys.reshape(*keys.shape[:2], -1)


@pytest.mark.parametrize('num_registers', [0, 2])
def test_vit_matches_numpy_reference(num_registers):
  eps = 1e-5
  model = vit(ln_pre=True, ln_eps=eps, head_bias=True, act='gelu', num_registers=num_registers)
  params = init(model, images())
  assert ('registers' in params) == bool(num_registers)
  x, head, _ = np_vit_tokens(params, images(), 4, eps, 'standard')
  close(model.apply({'params': params}, images()), x[:, 0] @ head['kernel'] + head['bias'])


@pytest.mark.parametrize('mode', ['standard', 'sclip'])
def test_local_attention_matches_numpy_reference(mode):
  eps = 1e-5
  model = vit(ln_pre=True, ln_eps=eps, head_bias=True, num_registers=2, attention_radius=1)
  params = init(model, images())
  x, head, _ = np_vit_tokens(params, images(), 4, eps, mode, radius=1)
  if mode == 'standard':
    close(model.apply({'params': params}, images()), x[:, 0] @ head['kernel'] + head['bias'])
  else:  # SCLIP's q-q + k-k attention keeps the locality.
    close(model.apply({'params': params}, images(), mode, method='dense_features'),
          (x[:, 3:] @ head['kernel'] + head['bias']).reshape(2, 4, 4, -1))


def test_local_attention_keeps_distant_patches_apart():
  """GAP tower without prefix tokens, 2 blocks of radius 1: a patch sees 2 grid steps at most, so changing the
  bottom-right patch leaves the top-left patch's features unchanged (and changes them with global attention)."""
  imgs = images()
  moved = imgs.at[:, 12:, 12:].add(3.)  # The bottom-right 4 x 4 patch of the 4 x 4 grid.
  for radius, same in ((1, True), (0, False)):
    model = vit(pool='gap', cls_token=False, posemb='sincos2d', attention_radius=radius)
    params = init(model, imgs)
    feats = lambda x: model.apply({'params': params}, x, 'none', method='dense_features')[:, 0, 0]
    assert np.allclose(feats(imgs), feats(moved), atol=1e-6) == same, radius
  with pytest.raises(ValueError, match='attention_radius'):
    init(vit(attention_radius=-1), imgs)


def test_registers_take_part_in_attention_but_not_in_outputs():
  eps = 1e-5
  model = vit(ln_pre=True, ln_eps=eps, head_bias=True, pool='gap', num_registers=3)
  params = init(model, images())
  x, head, keys = np_vit_tokens(params, images(), 4, eps, 'standard')
  patches = x[:, 1 + 3:] @ head['kernel'] + head['bias']  # CLS and registers dropped.
  close(model.apply({'params': params}, images()), patches.mean(1))  # GAP over the patches only.
  close(model.apply({'params': params}, images(), 'none', method='dense_features'), patches.reshape(2, 4, 4, -1))
  close(model.apply({'params': params}, images(), method='dense_keys'), keys[:, 1 + 3:].reshape(2, 4, 4, -1))
  # Registers influence the patches through attention (a channel-constant shift would vanish in ln_pre).
  moved = {**params, 'registers': params['registers'] * -5.}
  assert not np.allclose(model.apply({'params': moved}, images()), model.apply({'params': params}, images()),
                         atol=1e-4)


# micro is 32 wide: patch 4 -> two stride-2 convs (16, 32 channels), patch 8 -> three (8, 16, 32); then the 1x1
# token embedding.
@pytest.mark.parametrize('variant,size,channels', [('micro/4', IMG, [16, 32]), ('micro/8', 2 * IMG, [8, 16, 32])])
def test_conv_stem_matches_numpy_reference(variant, size, channels):
  eps = 1e-5
  model = vit(ln_pre=True, ln_eps=eps, head_bias=True, stem='conv', variant=variant, image_size=size)
  imgs = images(size=size)
  params = init(model, imgs)
  kernels = [params[f'stem_conv{i}']['kernel'].shape for i in range(len(channels))]
  assert kernels == [(3, 3, c_in, c) for c_in, c in zip([3] + channels, channels)]
  assert params['embedding']['kernel'].shape == (1, 1, 32, 32)
  x, head, _ = np_vit_tokens(params, imgs, int(variant.split('/')[1]), eps, 'standard')
  close(model.apply({'params': params}, imgs), x[:, 0] @ head['kernel'] + head['bias'])
  assert model.apply({'params': params}, imgs, 'maskclip', method='dense_features').shape == (2, 4, 4, 24)


@pytest.mark.parametrize('mode', DENSE_MODES)
def test_dense_features_match_numpy_reference(mode):
  eps = 1e-5
  model = build_model(micro_config(**{'image.ln_pre': True, 'image.ln_eps': eps, 'image.head_bias': True}))
  params = init(model, images(), TOKENS)
  x, head, _ = np_vit_tokens(params['img'], images(), 4, eps, 'standard' if mode == 'none' else mode)
  ref = (x[:, 1:] @ head['kernel'] + head['bias']).reshape(2, 4, 4, -1)  # CLS dropped.
  ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
  close(model.apply({'params': params}, images(), mode, method='dense_image_features'), ref)


def np_map_head_dense(x, p, eps, mode):
  """The MAP head applied per token in float64: tokens [B, L, W] -> [B, L, W], each token its own query."""
  a = p['MultiHeadDotProductAttention_0']
  proj = lambda name: np.einsum('blw,whd->blhd', x, a[name]['kernel']) + a[name]['bias']
  attend = lambda s, t, v: np.einsum('bhqk,bkhd->bqhd', np_softmax(np.einsum('bqhd,bkhd->bhqk', s, t) /
                                                                   np.sqrt(s.shape[-1])), v)
  q, k, v = proj('query'), proj('key'), proj('value')
  mixed = {'maskclip': v, 'reduced': v, 'sclip': attend(q, q, v) + attend(k, k, v), 'clearclip': attend(q, q, v)}
  o = np.einsum('blhd,hdw->blw', mixed[mode], a['out']['kernel']) + a['out']['bias']
  if mode in ('reduced', 'clearclip'):
    return o
  m = p['MlpBlock_0']
  h = np_layernorm(o, p['LayerNorm_0'], eps) @ m['Dense_0']['kernel'] + m['Dense_0']['bias']
  h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
  return o + h @ m['Dense_1']['kernel'] + m['Dense_1']['bias']


@pytest.mark.parametrize('mode', ['none', 'maskclip', 'reduced', 'sclip', 'clearclip'])
def test_map_pooled_dense_features_go_through_the_map_head(mode):
  eps = 1e-5
  model = build_model(micro_config(**{'image.ln_pre': True, 'image.ln_eps': eps, 'image.head_bias': True,
                                      'image.pool': 'map'}))
  params = init(model, images(), TOKENS)
  p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params['img'])
  x, head, _ = np_vit_tokens(params['img'], images(), 4, eps, 'standard')  # The encoder itself is unchanged.
  if mode != 'none':
    x = np_map_head_dense(x, p64['MAPHead_0'], eps, mode)
  ref = (x[:, 1:] @ head['kernel'] + head['bias']).reshape(2, 4, 4, -1)
  ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
  close(model.apply({'params': params}, images(), mode, method='dense_image_features'), ref)


@pytest.mark.parametrize('scan', [False, True])
def test_dense_keys_match_numpy_reference(scan):
  eps = 1e-5
  model = build_model(micro_config(scan=scan, **{'image.ln_pre': True, 'image.ln_eps': eps}))
  params = init(build_model(micro_config(**{'image.ln_pre': True})), images(), TOKENS)
  _, _, ref = np_vit_tokens(params['img'], images(), 4, eps, 'standard')
  keys = model.apply({'params': stack_blocks(params) if scan else params}, images(), method='dense_image_keys')
  assert keys.shape == (2, 4, 4, 32) and keys.dtype == jnp.float32
  close(keys, ref[:, 1:].reshape(2, 4, 4, 32))
