"""Flax models: ViT image tower, text transformer, and the contrastive two-tower model built from a config."""

import math

import jax

from vitclip.models.text import TextTransformer
from vitclip.models.two_tower import TwoTower, l2_normalize
from vitclip.models.variants import VARIANTS, decode_variant
from vitclip.models.vit import VisionTransformer

__all__ = ['TextTransformer', 'TwoTower', 'VARIANTS', 'VisionTransformer', 'build_model', 'count_params',
           'decode_variant', 'l2_normalize']

_SHARED = ('embed_dim', 'dtype', 'remat_policy', 'scan')  # config.model fields that both towers take.


def build_model(config_model) -> TwoTower:
  """config.model (ConfigDict or mapping; see configs/base.py) -> TwoTower.

  Every tower field is copied into plain Python values, so the module is hashable. `t_init` / `b_init` left at
  None (config not passed through `vitclip.config.resolve`) mean t = 1/0.07 and no bias.
  """
  shared = {k: _plain(config_model[k]) for k in _SHARED}
  image = {k: _plain(v) for k, v in config_model['image'].items()}
  text = {k: _plain(v) for k, v in config_model['text'].items()}
  return TwoTower(img=VisionTransformer(**image, **shared), txt=TextTransformer(**text, **shared),
                  t_init=_plain(config_model['t_init']), b_init=_plain(config_model['b_init']))


def _plain(value):
  """Lists -> tuples: module fields must be hashable. (ConfigDict access already resolves FieldReferences.)"""
  return tuple(value) if isinstance(value, list) else value


def count_params(params) -> int:
  """Number of scalars in a param tree of arrays or ShapeDtypeStructs."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
