r"""Fine-tuning a model directory on a labelled data set: contrastive ("fine-tune like you pretrain") or a classifier.

  python train.py --config configs/finetune.py:DIR,DATASET --workdir OUT
  python train.py --config configs/finetune.py:DIR,shapes,feature=color,steps=300 --workdir OUT
  python train.py --config configs/finetune.py:DIR,DATASET,method=classifier,layer_decay=0.75 --workdir OUT

DIR is a training workdir or a converted model (python -m vitclip.convert); DATASET a classification data set,
e.g. a class-folder import (python -m vitclip.data.folder --classes_from_subdirs: train / validation / test).
Each training image's caption is a template filled with its class name (config.data.caption_templates; one
template drawn per example and step), and the run trains with DIR's own loss (softmax or sigmoid; A-CLIP when
DIR trained with it). The metric is zero-shot accuracy on the test split with the same templates.

method=classifier trains the image tower and a linear head initialised from the zero-shot classifier (the
templates' class embeddings; vitclip/classifier.py) with cross-entropy on the labels; the text tower, t and b stay
frozen. Its metrics: the head's top-1 on the test split, and WiSE-FT's mixes with the zero-shot model
(config.evals.classifier.wise_alphas).

`arg` is `DIR,DATASET` followed by optional knobs `k=v`:
  method                     'contrastive' (default) or 'classifier';
  batch, steps, lr, warmup   the schedule (AdamW, cosine);
  layer_decay                layer-wise lr decay (block i of L: lr x layer_decay^(L - i)); 1 = off;
  feature                    the ClassLabel feature that names the class ('label'; shapes also has 'color');
  templates                  a template set ('clip80', 'clip7') or '|'-joined templates; '' = DIR's zero-shot
                             templates for that entry (its evals.zeroshot.templates_for, else templates);
  towers                     which params train (contrastive): '' every one, 'img' the image tower only,
                             'img+txt' both towers with the logit scale and bias frozen.
Everything stays overridable on the command line (--config.optim.weight_decay=0.1, ...).
"""

import os

from configs import pretrained
from vitclip import config as config_lib

KNOBS = dict(method='contrastive', batch=64, steps=300, lr=1e-4, warmup=30, layer_decay=1.0, feature='label',
             templates='', towers='')
METHODS = ('contrastive', 'classifier')
TOWERS = ('img', 'txt', 't', 'b')


def get_config(arg=None):
  directory, dataset, *rest = (arg or '').split(',') + ['']
  if not directory or not dataset:
    raise config_lib.ConfigError('configs/finetune.py needs a model directory and a data set: '
                                 '--config configs/finetune.py:DIR,DATASET[,k=v,...].')
  k = config_lib.parse_arg(','.join(rest), **KNOBS)
  if k.method not in METHODS:
    raise config_lib.ConfigError(f'configs/finetune.py:{arg}: method={k.method!r} is unknown; use one of '
                                 f'{METHODS}.')
  source = config_lib.load_model_dir(directory, pretrained.RUN_CONFIGS['base']())
  c = pretrained.get_config(f'{directory},base')  # Training settings of configs/base.py, the model from DIR.
  c.aclip = source.aclip  # Fine-tune like DIR pretrained: A-CLIP's objective when DIR used it.
  if dataset == source.data.name:
    c.data = source.data  # The same data set (e.g. the shapes world with DIR's settings).
  c.data.name = dataset
  c.data.train_split = 'train'
  c.data.label_feature = k.feature
  # DIR's zero-shot prompts for this entry (its templates_for, e.g. shapes' colour prompts), else its templates.
  key = dataset if k.feature == 'label' else f'{dataset}_{k.feature}'
  templates = k.templates or source.evals.zeroshot.templates_for.get(key, source.evals.zeroshot.templates)
  c.data.caption_templates = templates
  c.batch_size, c.total_steps = k.batch, k.steps
  c.optim.lr, c.optim.warmup_steps, c.optim.layer_decay = k.lr, k.warmup, k.layer_decay
  c.log_every, c.ckpt_every = max(1, k.steps // 20), max(1, k.steps // 3)
  towers = [t.strip() for t in k.towers.split('+') if t.strip()]
  unknown = [t for t in towers if t not in TOWERS]
  if unknown:
    raise config_lib.ConfigError(f'configs/finetune.py:{arg}: towers={k.towers!r} names {unknown}; use a '
                                 f'subset of {"+".join(TOWERS)} joined by "+" ("" trains every param).')
  if towers and k.method == 'classifier':
    raise config_lib.ConfigError(f'configs/finetune.py:{arg}: towers= is for contrastive fine-tuning; a classifier '
                                 'trains the image tower and its head.')
  if towers:  # Everything else is frozen: a path that does not start with a trained tower.
    c.optim.frozen = '^(?!(' + '|'.join(towers) + ')(/|$))'
  c.init_from = os.path.abspath(os.path.expanduser(directory))
  c.evals.zeroshot.datasets = (dataset if k.feature == 'label' else f'{dataset}:{k.feature}',)
  c.evals.zeroshot.split = 'test'
  c.evals.zeroshot.templates = templates
  c.evals.zeroshot.templates_for = {}
  if k.method == 'classifier':
    c.aclip.enabled = False  # Labels, not pairs: the contrastive objective of DIR does not apply.
    c.classifier.enabled = True
    c.evals.names = ('classifier',)  # Its wise_0 entry is zero-shot with these prompts (evals.zeroshot's).
    c.evals.classifier.split = 'test'
  else:
    c.evals.names = ('zeroshot',)
  return c
