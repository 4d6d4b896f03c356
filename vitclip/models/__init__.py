"""Flax models: ViT image tower, text transformer, and the contrastive two-tower model built from a config."""

import functools
import math

import jax
import jax.numpy as jnp

from vitclip.models.text import TextTransformer
from vitclip.models.two_tower import TwoTower, clamp_logit_scale, l2_normalize, logit_params
from vitclip.models.variants import VARIANTS, decode_variant
from vitclip.models.vit import VisionTransformer

__all__ = ['TextTransformer', 'TwoTower', 'VARIANTS', 'VisionTransformer', 'build_model', 'clamp_logit_scale',
           'abstract_params', 'count_params', 'decode_variant', 'init_params', 'l2_normalize', 'logit_params']

# config.model fields that both towers take.
_SHARED = ('embed_dim', 'dtype', 'remat_policy', 'scan', 'attention_chunk', 'mlp_chunk')


def build_model(config_model) -> TwoTower:
  """config.model (ConfigDict or mapping; see configs/base.py) -> TwoTower.

  Every tower field is copied into plain Python values, so the module is hashable. A field missing from
  `config_model` keeps the module's own default (the modules own the model defaults; configs/base.py lists the
  same values with comments). `t_init` / `b_init` left at None (config not passed through
  `vitclip.config.resolve`) mean t = 1/0.07 and no bias.
  """
  shared = {k: _plain(config_model[k]) for k in _SHARED if k in config_model}
  image = {k: _plain(v) for k, v in config_model['image'].items()}
  text = {k: _plain(v) for k, v in config_model['text'].items()}
  scale = {k: _plain(config_model[k]) for k in ('t_init', 'b_init') if k in config_model}
  return TwoTower(img=VisionTransformer(**image, **shared), txt=TextTransformer(**text, **shared), **scale)


def init_params(model: TwoTower, rng):
  """Params of `model` from dummy inputs at its configured image size and text length (float32 arrays; use
  under `jax.eval_shape` for shapes only, or `jax.jit(..., out_shardings=...)` to create them sharded)."""
  size, length = model.img.image_size, model.txt.max_len
  return model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32), jnp.zeros((1, length), jnp.int32))['params']


def abstract_params(model: TwoTower):
  """The ShapeDtypeStructs of `init_params(model, rng)`. Traced once per equal model in a process (config
  validation, the run's abstract state, init_from and the API each need them); a fresh tree on every call."""
  return jax.tree.map(lambda x: x, _abstract_params(model))


@functools.lru_cache(maxsize=16)
def _abstract_params(model: TwoTower):
  return jax.eval_shape(lambda r: init_params(model, r), jax.random.key(0))


def _plain(value):
  """Lists -> tuples: module fields must be hashable. (ConfigDict access already resolves FieldReferences.)"""
  return tuple(value) if isinstance(value, list) else value


def count_params(params) -> int:
  """Number of scalars in a param tree of arrays or ShapeDtypeStructs."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
