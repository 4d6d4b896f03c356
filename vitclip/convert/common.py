"""What every source format shares: checked access to the source arrays, layout transforms into vitclip's
(big_vision) parameter layout, the variant table lookup, and writing the output directory.

A converter describes a source as `Rule`s, one per vitclip parameter in the source's natural order:
`'img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel' -> Rule('visual....c_fc.weight', LINEAR)`.
`assemble` walks the rules, checks every source array against the shape the vitclip model expects (translated
into the source's layout), and reports the first missing, misshapen or unused key in one message.
"""

import dataclasses
import math
import os
import re
from typing import Callable, Mapping

import jax
import numpy as np

from vitclip import checkpoint
from vitclip.models import build_model, variants

Shape = tuple[int, ...]


class ConvertError(ValueError):
  """A source that cannot be converted: the message names the file, the first bad key and what was expected."""


# ----------------------------------------------------------------------------------------------- layouts


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one source array maps onto a vitclip param of shape `target`.

  source_shape: target shape -> the shape the source array must have.
  apply: (source array, target shape) -> array of the target shape.
  """
  name: str
  source_shape: Callable[[Shape], Shape]
  apply: Callable[[np.ndarray, Shape], np.ndarray]


def _flat_out(t: Shape) -> int:
  return math.prod(t[1:])


def reshape_from(source: Callable[[Shape], Shape]) -> Layout:
  """The same elements in the same order, source shape `source(target)`: [W] -> [1, 1, W] class token,
  [N, W] -> [1, N, W] position embeddings, [H·D] -> [H, D] attention biases, [1] -> [] scalars."""
  return Layout('reshape', source, lambda a, t: a.reshape(t))


# Same shape (big_vision sources; OpenAI's projection matrices, which are already [in, out]).
SAME = Layout('same', lambda t: t, lambda a, t: a)
# torch Linear weight [out, in] -> flax kernel [in, *out] (Dense; query/key/value [W, H, D]).
LINEAR = Layout('linear', lambda t: (_flat_out(t), t[0]), lambda a, t: a.T.reshape(t))
# torch Linear weight [out, heads·head_dim] -> attention `out` kernel [H, D, out].
LINEAR_IN = Layout('linear_in', lambda t: (t[-1], math.prod(t[:-1])), lambda a, t: a.T.reshape(t))
# torch Conv2d weight [out, in, kh, kw] -> flax Conv kernel [kh, kw, in, out].
CONV = Layout('conv', lambda t: (t[3], t[2], t[0], t[1]), lambda a, t: a.transpose(2, 3, 1, 0))
BIAS = reshape_from(lambda t: (math.prod(t),))


def fused(part: int, inner: Layout, parts: int = 3) -> Layout:
  """Part `part` of `parts` arrays stacked on the source's first axis (fused q/k/v: in_proj_weight [3W, W])."""
  def source_shape(t):
    s = inner.source_shape(t)
    return (parts * s[0], *s[1:])

  def apply(a, t):
    n = a.shape[0] // parts
    return inner.apply(a[part * n:(part + 1) * n], t)
  return Layout(f'fused{part}_{inner.name}', source_shape, apply)


def stacked(index: int, depth: int) -> Layout:
  """Layer `index` of a big_vision scan checkpoint ('encoderblock' params with a leading [depth] axis)."""
  return Layout(f'stacked{index}', lambda t: (depth, *t), lambda a, t: a[index])


@dataclasses.dataclass(frozen=True)
class Rule:
  """vitclip param <- source array `key` through `layout`."""
  key: str
  layout: Layout = SAME


# --------------------------------------------------------------------------------------- checked source


class Source:
  """The arrays of one checkpoint by key, with the first bad key reported as a ConvertError.

  Arrays: float numpy arrays of any float dtype (converted to float32 when taken).
  """

  def __init__(self, name: str, arrays: Mapping[str, np.ndarray], ignore: str = r'$^'):
    self.name = name
    self.arrays = dict(arrays)
    self.ignore = re.compile(ignore)  # Buffers that carry no weights (position ids, masks, sizes).
    self.used: set[str] = set()

  def __contains__(self, key: str) -> bool:
    return key in self.arrays

  def shape(self, key: str, needed_for: str) -> Shape:
    """Shape of `key` (read to infer the architecture); missing -> error saying what it was needed for."""
    if key not in self.arrays:
      raise ConvertError(f'{self.name}: missing key {key!r} (needed to infer {needed_for}); is this the right '
                         'format (--format)?')
    return tuple(self.arrays[key].shape)

  def take(self, key: str, shape: Shape, context: str = '') -> np.ndarray:
    """The array `key` as float32, checked to have `shape`."""
    where = f' for {context}' if context else ''
    if key not in self.arrays:
      raise ConvertError(f'{self.name}: missing key {key!r} (expected shape {tuple(shape)}{where}).')
    a = self.arrays[key]
    if tuple(a.shape) != tuple(shape):
      raise ConvertError(f'{self.name}: key {key!r} has shape {tuple(a.shape)}, expected {tuple(shape)}{where}.')
    self.used.add(key)
    return np.asarray(a, np.float32)

  def check_all_used(self, context: str = ''):
    for key in self.arrays:
      if key not in self.used and not self.ignore.search(key):
        where = f' {context}' if context else ''
        raise ConvertError(f'{self.name}: unexpected key {key!r} (shape {tuple(self.arrays[key].shape)}) for the'
                           f'{where} architecture; wrong --format or --variant?')

  def layer_count(self, pattern: str) -> int:
    """1 + the largest integer captured by `pattern` over the keys (0 if none match)."""
    found = [int(m.group(1)) for k in self.arrays if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


# ------------------------------------------------------------------------------------- shared mappings


@dataclasses.dataclass(frozen=True)
class TorchBlockNames:
  """Source names of one pre-LN transformer block in a torch layout, relative to the block prefix.

  `qkv` names the fused in_proj array (OpenAI, nn.MultiheadAttention) or is None for separate q/k/v
  projections named `q`, `k`, `v` (HF).
  """
  ln1: str
  ln2: str
  out: str
  fc1: str
  fc2: str
  qkv: str | None = None
  q: str = ''
  k: str = ''
  v: str = ''


HF_BLOCK = TorchBlockNames(ln1='layer_norm1', ln2='layer_norm2', out='self_attn.out_proj', fc1='mlp.fc1',
                           fc2='mlp.fc2', q='self_attn.q_proj', k='self_attn.k_proj', v='self_attn.v_proj')
OPENAI_BLOCK = TorchBlockNames(ln1='ln_1', ln2='ln_2', out='attn.out_proj', fc1='mlp.c_fc', fc2='mlp.c_proj',
                               qkv='attn.in_proj')


def layernorm_rules(target: str, source: str) -> dict[str, Rule]:
  """torch LayerNorm `source.{weight,bias}` -> flax `target/{scale,bias}`."""
  return {f'{target}/scale': Rule(f'{source}.weight'), f'{target}/bias': Rule(f'{source}.bias')}


def linear_rules(target: str, source: str, bias: bool = True, layout: Layout = LINEAR) -> dict[str, Rule]:
  rules = {f'{target}/kernel': Rule(f'{source}.weight', layout)}
  if bias:
    rules[f'{target}/bias'] = Rule(f'{source}.bias', BIAS)
  return rules


def attention_rules(target: str, q: str, k: str, v: str, out: str, qkv: str | None) -> dict[str, Rule]:
  """Multi-head attention -> vitclip `query/key/value` kernels [W, H, D], biases [H, D], `out` [H, D, W].

  qkv: prefix of fused `{qkv}_weight` [3W, W] / `{qkv}_bias` [3W] (q, k, v stacked in that order); None: the
  separate torch Linears `q`, `k`, `v`.
  """
  rules = {}
  for i, (name, sep) in enumerate((('query', q), ('key', k), ('value', v))):
    if qkv is None:
      rules.update(linear_rules(f'{target}/{name}', sep))
    else:
      rules[f'{target}/{name}/kernel'] = Rule(f'{qkv}_weight', fused(i, LINEAR))
      rules[f'{target}/{name}/bias'] = Rule(f'{qkv}_bias', fused(i, BIAS))
  rules.update(linear_rules(f'{target}/out', out, layout=LINEAR_IN))
  return rules


def torch_encoder_rules(target: str, source: str, depth: int, names: TorchBlockNames) -> dict[str, Rule]:
  """`depth` torch-layout blocks `{source}.{i}.*` -> vitclip `{target}/encoderblock_{i}/*`."""
  rules = {}
  for i in range(depth):
    t, s = f'{target}/encoderblock_{i}', f'{source}.{i}'
    rules.update(layernorm_rules(f'{t}/LayerNorm_0', f'{s}.{names.ln1}'))
    rules.update(attention_rules(
        f'{t}/MultiHeadDotProductAttention_0', *(f'{s}.{n}' for n in (names.q, names.k, names.v, names.out)),
        qkv=None if names.qkv is None else f'{s}.{names.qkv}'))
    rules.update(layernorm_rules(f'{t}/LayerNorm_1', f'{s}.{names.ln2}'))
    rules.update(linear_rules(f'{t}/MlpBlock_0/Dense_0', f'{s}.{names.fc1}'))
    rules.update(linear_rules(f'{t}/MlpBlock_0/Dense_1', f'{s}.{names.fc2}'))
  return rules


# ---------------------------------------------------------------------------------------- architecture


def find_variant(width: int, depth: int, mlp_dim: int, num_heads: int | None, what: str) -> str:
  """The name in vitclip's variant table with these sizes (num_heads None: not known from the source)."""
  for name, v in variants.VARIANTS.items():
    if (v['width'], v['depth'], v['mlp_dim']) == (width, depth, mlp_dim) and num_heads in (None, v['num_heads']):
      return name
  heads = '' if num_heads is None else f', num_heads={num_heads}'
  raise ConvertError(f'The {what} has width={width}, depth={depth}, mlp_dim={mlp_dim}{heads}: no vitclip variant '
                     'has these sizes; add one to vitclip/models/variants.py.')


def parse_variant(variant: str | None) -> tuple[str | None, str | None]:
  """'IMAGE[,TEXT]' (e.g. 'B/16' or 'So400m/14,So400m') -> (image variant, text variant). The text size
  defaults to the image size without the patch (SigLIP's towers have equal sizes)."""
  if not variant:
    return None, None
  image, _, text = variant.partition(',')
  image, text = image.strip(), (text.strip() or image.strip().partition('/')[0])
  try:
    if 'patch_size' not in variants.decode_variant(image):
      raise ValueError(f'the image variant {image!r} needs a patch size, e.g. "B/16"')
    variants.decode_variant(text)
  except ValueError as e:
    raise ConvertError(f'--variant={variant!r}: {e}') from None
  return image, text


# Model settings that are not facts about the source, so config.json leaves them to the config that loads it:
# the converter's own model computes in float32 and keeps no activations for backward.
BUILD = {'dtype': 'float32', 'remat_policy': 'none'}


def build(config):
  """The vitclip model of a converted config, whose model section sets every architecture field
  (`families`), with `BUILD`'s settings."""
  return build_model({**config.model.to_dict(), **BUILD})


def abstract_params(config) -> dict[str, Shape]:
  """Flat 'a/b/c' -> shape of the params `build(config)` initialises."""
  model = build(config)
  size, length = config.model.image.image_size, config.model.text.max_len
  tree = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32),
                                           np.zeros((1, length), np.int32))['params'])
  return {_path(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


# Input-to-output order of the parts of a tower, for reporting the first bad key where a reader expects it.
_ORDER = ('embedding', 'Embed_0', 'cls', 'pos_embedding', 'ln_pre', 'Transformer', 'Encoder_0', 'MAPHead_0',
          'head')


def model_order(paths) -> list[str]:
  """Param paths sorted image tower, text tower, t, b; each tower from its input to its head, blocks by index,
  biases after weights (`abstract_params` sorts names alphabetically)."""
  def key(path):
    tower, _, rest = path.partition('/')
    part = rest.split('/')[0]
    block = re.search(r'encoderblock_(\d+)', path)
    return (('img', 'txt', 't', 'b').index(tower), _ORDER.index(part) if part in _ORDER else len(_ORDER),
            'encoder_norm' in path, int(block.group(1)) if block else -1, path.endswith('/bias'), path)
  return sorted(paths, key=key)


def _path(key_path) -> str:
  return '/'.join(str(getattr(k, 'key', k)) for k in key_path)


def depth(config, tower: str) -> int:
  """Number of blocks of `tower` ('image' / 'text') in the config's variant (the rules cover exactly these)."""
  return variants.decode_variant(config.model[tower].variant)['depth']


def describe(config) -> str:
  m = config.model
  return f'image {m.image.variant} @{m.image.image_size}px + text {m.text.variant}'


def assemble(config, source: Source, rules: dict[str, Rule]) -> dict:
  """Builds the float32 params tree of `build(config)` from `source`.

  Every source array is checked against the shape the model expects; the first problem (in the rules' order)
  raises a ConvertError naming the key and the expected shape. Unused source arrays are errors too.
  """
  expected = abstract_params(config)
  if set(rules) != set(expected):  # A converter bug, not a user error.
    raise AssertionError(f'rules and model disagree: missing {sorted(set(expected) - set(rules))[:5]}, '
                         f'extra {sorted(set(rules) - set(expected))[:5]}')
  context = describe(config)
  flat = {}
  for path, rule in rules.items():
    target = expected[path]
    array = source.take(rule.key, rule.layout.source_shape(target), context)
    flat[path] = np.array(rule.layout.apply(array, target), np.float32, order='C')  # Copies; keeps 0-d.
  source.check_all_used(context)
  tree = {}
  for path in expected:  # Model order.
    *parents, leaf = path.split('/')
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = flat[path]
  return tree


# ------------------------------------------------------------------------------------------------ output


def write(out: str, config, params, save_tokenizer: Callable[[str], None]):
  """Writes `out/config.json` (`config`: the fields the source determines), the tokenizer
  (`out/<config.tokenizer.path>`) and the params checkpoint."""
  if os.path.exists(os.path.join(out, 'checkpoints')):
    raise ConvertError(f'{out} already holds a checkpoint; convert into a new directory.')
  os.makedirs(out, exist_ok=True)
  save_tokenizer(os.path.join(out, config.tokenizer.path))
  checkpoint.save_params(out, params, step=0)
  tmp = os.path.join(out, 'config.json.tmp')
  with open(tmp, 'w') as f:
    f.write(config.to_json_best_effort(indent=1))
  os.replace(tmp, os.path.join(out, 'config.json'))  # Last: a directory with config.json is complete.

