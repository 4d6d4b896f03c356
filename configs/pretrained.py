r"""The config of a model directory: a converted checkpoint (vitclip.convert) or a vitclip training workdir.

  # Evaluate a converted model (zero-shot, retrieval, dense) without training:
  python eval.py --config configs/pretrained.py:DIR --workdir OUT --checkpoint_dir DIR \
      --config.evals.names="('zeroshot','retrieval','dense')"
  # Fine-tune it with the training settings of configs/shapes.py (model, tokenizer, loss, normalisation from DIR):
  python train.py --config configs/pretrained.py:DIR,shapes --workdir OUT [--config.model.image.image_size=64]
  # LiT: load both towers, keep the image tower fixed:
  python train.py --config configs/pretrained.py:DIR,shapes --workdir OUT --config.optim.frozen='^img/'

`arg` is `DIR` or `DIR,NAME`:
  * DIR: every field from DIR/config.json (keys missing there keep configs/base.py defaults);
  * DIR,NAME: configs/NAME.py (a key of `RUN_CONFIGS`), with the fields that must agree with the weights taken from DIR (`FROM_MODEL`).
Either way `tokenizer.path` points at DIR's tokenizer and `init_from=DIR`, so training starts from DIR's params;
every field stays overridable on the command line (`--config.data.name=...`).
"""

import os

from configs import base, shapes
from vitclip import config as config_lib

# Fields that describe the pretrained model rather than the run: the architecture, its tokenizer, the loss its
# logit scale / bias belong to, and the input normalisation it was trained with.
FROM_MODEL = ('model', 'tokenizer', 'loss', 'data.mean', 'data.std')
# Configs whose training, data and evaluation settings `DIR,NAME` starts from.
RUN_CONFIGS = {'base': base.get_config, 'shapes': shapes.get_config}


def get_config(arg=None):
  directory, _, name = (arg or '').partition(',')
  if not directory:
    raise config_lib.ConfigError('configs/pretrained.py needs a model directory: '
                                 '--config configs/pretrained.py:DIR or configs/pretrained.py:DIR,shapes.')
  if name and name not in RUN_CONFIGS:
    raise config_lib.ConfigError(f'configs/pretrained.py:{arg}: unknown run config {name!r}; use one of '
                                 f'{sorted(RUN_CONFIGS)} (or add it to RUN_CONFIGS).')
  pretrained = config_lib.load_model_dir(directory, base.get_config())
  c = pretrained
  if name:
    c = RUN_CONFIGS[name]()
    for key in FROM_MODEL:
      *parents, leaf = key.split('.')
      src, dst = pretrained, c
      for p in parents:
        src, dst = src[p], dst[p]
      dst[leaf] = src[leaf]
  c.init_from = os.path.abspath(os.path.expanduser(directory))
  c.init_from_towers = ''  # All of DIR's params; narrow with --config.init_from_towers=img.
  return c
