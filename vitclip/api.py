"""Using a trained or converted model from Python, without a config file or a training run.

  import vitclip
  model, params, tokenizer, preprocess = vitclip.load('models/clip_b16')      # a run dir or a converted model
  images = np.stack([preprocess(Image.open(p)) for p in paths])               # float32 [B, S, S, 3]
  zimg = vitclip.encode_image(model, params, images)                          # float32 [B, D], L2-normalized
  classifier = vitclip.zero_shot_classifier(model, params, tokenizer, ['cat', 'dog'])   # float32 [C, D]
  probs = jax.nn.softmax(100 * zimg @ classifier.T)

A model directory holds `config.json`, its tokenizer and `checkpoints/<step>/state` (written by train.py or
`python -m vitclip.convert`). `load` restores the params replicated over the current devices (or the given
ones), whatever mesh they were saved from.
"""

import functools
import os
from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from vitclip import checkpoint as checkpoint_lib
from vitclip import config as config_lib
from vitclip import sharding
from vitclip.data import pipeline
from vitclip.models import TwoTower, abstract_params, build_model
from vitclip.tokenizer import Tokenizer


def load(directory: str, *, devices=None) -> tuple[TwoTower, dict, Tokenizer, Callable]:
  """Loads a model directory (a training run or a converted model).

  Args:
    directory: holds config.json, the tokenizer and checkpoints/<step>/state (the latest step is used), or is
      one step directory `checkpoints/<step>` of such a directory.
    devices: devices to place the params on, replicated (default: all local devices).

  Returns:
    (model, params, tokenizer, preprocess): the Flax TwoTower, its params (float32 jax.Arrays), the tokenizer
    (`tokenizer.encode(texts) -> int32 [N, L]`), and `preprocess(image) -> float32 [S, S, 3]` for a PIL image
    or a uint8 [H, W, 3] array (resized to the model's resolution, normalized as in training).
  """
  model_dir = _model_dir(directory)
  config = config_lib.load_model_dir(model_dir, ml_collections.ConfigDict())
  model = build_model(config.model)
  tokenizer = Tokenizer.from_file(config.tokenizer.path, model.txt.max_len)
  mesh = Mesh(np.asarray(devices or jax.local_devices()), ('data',))
  abstract = abstract_params(model)
  target = checkpoint_lib.abstract_with_shardings(abstract, jax.tree.map(lambda _: sharding.replicated(mesh),
                                                                         abstract))
  params = checkpoint_lib.restore_params(directory, target, fix=f'{model_dir}/config.json does not describe '
                                         'these weights; write the directory again (train.py / vitclip.convert).')
  data = config.get('data', {})
  spec = pipeline.ImageSpec(size=model.img.image_size, mean=tuple(data.get('mean', (0.5, 0.5, 0.5))),
                            std=tuple(data.get('std', (0.5, 0.5, 0.5))))
  return model, params, tokenizer, functools.partial(_preprocess, spec)


def _model_dir(directory: str) -> str:
  """The model directory of `directory` or of a step directory inside its checkpoints/."""
  directory = os.path.abspath(os.path.expanduser(directory))
  if os.path.isdir(os.path.join(directory, checkpoint_lib.STATE)):
    return os.path.dirname(os.path.dirname(directory))
  return directory


def _preprocess(spec: pipeline.ImageSpec, image) -> np.ndarray:
  array = np.asarray(image.convert('RGB')) if hasattr(image, 'convert') else np.asarray(image)
  if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
    raise ValueError(f'preprocess expects a PIL image or a uint8 [H, W, 3] array, got {array.dtype} '
                     f'{array.shape}.')
  return spec.eval_view(array)


@functools.partial(jax.jit, static_argnums=0)
def _encode_image(model: TwoTower, params, images):
  return model.apply({'params': params}, images, method='encode_image')


@functools.partial(jax.jit, static_argnums=0)
def _encode_text(model: TwoTower, params, tokens):
  return model.apply({'params': params}, tokens, method='encode_text')


def encode_image(model: TwoTower, params, images) -> jax.Array:
  """images: float32 [B, S, S, 3] (from `preprocess`) -> float32 [B, D], L2-normalized."""
  return _encode_image(model, params, np.asarray(images, np.float32))


def encode_text(model: TwoTower, params, tokenizer: Tokenizer, texts: Sequence[str]) -> jax.Array:
  """N strings -> float32 [N, D], L2-normalized."""
  return _encode_text(model, params, tokenizer.encode(list(texts)))


def zero_shot_classifier(model: TwoTower, params, tokenizer: Tokenizer, classnames: Sequence[str],
                         templates: Sequence[str] = ('a photo of a {}.',)) -> jax.Array:
  """float32 [C, D]: per class, every template's text embedding averaged and renormalized (CLIP's protocol)."""
  texts = [t.format(c) for c in classnames for t in templates]
  emb = encode_text(model, params, tokenizer, texts).reshape(len(classnames), len(templates), -1).mean(axis=1)
  return emb / np.linalg.norm(emb, axis=-1, keepdims=True)
