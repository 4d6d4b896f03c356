r"""Contrastive fine-tuning of a model directory on a labelled data set ("fine-tune like you pretrain").

  python train.py --config configs/finetune.py:DIR,DATASET --workdir OUT
  python train.py --config configs/finetune.py:DIR,shapes,feature=color,steps=300 --workdir OUT

DIR is a training workdir or a converted model (python -m vitclip.convert); DATASET a classification data set,
e.g. a class-folder import (python -m vitclip.data.folder --classes_from_subdirs: train / validation / test).
Each training image's caption is a template filled with its class name (config.data.caption_templates; one
template drawn per example and step), and the run trains with DIR's own loss (softmax or sigmoid; A-CLIP when
DIR trained with it). The metric is zero-shot accuracy on the test split with the same templates.

`arg` is `DIR,DATASET` followed by optional knobs `k=v`:
  batch, steps, lr, warmup   the schedule (AdamW, cosine);
  feature                    the ClassLabel feature that names the class ('label'; shapes also has 'color');
  templates                  a template set ('clip80', 'clip7') or '|'-joined templates; '' = DIR's zero-shot
                             templates;
  towers                     which params train: '' every one, 'img' the image tower only, 'img+txt' both towers
                             with the logit scale and bias frozen.
Everything stays overridable on the command line (--config.optim.weight_decay=0.1, ...).
"""

import os

from configs import pretrained
from vitclip import config as config_lib

KNOBS = dict(batch=64, steps=300, lr=1e-4, warmup=30, feature='label', templates='', towers='')
TOWERS = ('img', 'txt', 't', 'b')


def get_config(arg=None):
  directory, dataset, *rest = (arg or '').split(',') + ['']
  if not directory or not dataset:
    raise config_lib.ConfigError('configs/finetune.py needs a model directory and a data set: '
                                 '--config configs/finetune.py:DIR,DATASET[,k=v,...].')
  k = config_lib.parse_arg(','.join(rest), **KNOBS)
  source = config_lib.load_model_dir(directory, pretrained.RUN_CONFIGS['base']())
  c = pretrained.get_config(f'{directory},base')  # Training settings of configs/base.py, the model from DIR.
  c.aclip = source.aclip  # Fine-tune like DIR pretrained: A-CLIP's objective when DIR used it.
  if dataset == source.data.name:
    c.data = source.data  # The same data set (e.g. the shapes world with DIR's settings).
  c.data.name = dataset
  c.data.train_split = 'train'
  c.data.label_feature = k.feature
  templates = k.templates or source.evals.zeroshot.templates
  c.data.caption_templates = templates
  c.batch_size, c.total_steps = k.batch, k.steps
  c.optim.lr, c.optim.warmup_steps = k.lr, k.warmup
  c.log_every, c.ckpt_every = max(1, k.steps // 20), max(1, k.steps // 3)
  towers = [t.strip() for t in k.towers.split('+') if t.strip()]
  unknown = [t for t in towers if t not in TOWERS]
  if unknown:
    raise config_lib.ConfigError(f'configs/finetune.py:{arg}: towers={k.towers!r} names {unknown}; use a '
                                 f'subset of {"+".join(TOWERS)} joined by "+" ("" trains every param).')
  if towers:  # Everything else is frozen: a path that does not start with a trained tower.
    c.optim.frozen = '^(?!(' + '|'.join(towers) + ')(/|$))'
  entry = dataset if k.feature == 'label' else f'{dataset}:{k.feature}'
  c.evals.names = ('zeroshot',)
  c.evals.zeroshot.datasets = (entry,)
  c.evals.zeroshot.split = 'test'
  c.evals.zeroshot.templates = templates
  c.evals.zeroshot.templates_for = {}
  c.init_from = os.path.abspath(os.path.expanduser(directory))
  return c
