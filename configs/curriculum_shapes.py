r"""Curriculum pseudo-labelling (RS-CLIP's Algorithm 1) on the shapes test images with their labels hidden.

  python -m vitclip.curriculum --config configs/curriculum_shapes.py --workdir OUT --config.model=DIR
  python -m vitclip.curriculum --config configs/curriculum_shapes.py --workdir OUT --config.model=DIR \
      --config.feature=color --config.method=classifier --config.k_schedule="(16,48,128)"

This file declares every field a curriculum config has (vitclip/curriculum.py reads them; its docstring says
what a round does); other curriculum configs start from it. The fine-tuning knobs are configs/finetune.py's, sized
for a CPU: a round is `steps` steps of `batch`.
"""

import ml_collections

from configs import finetune
from configs.ablation_shapes import dotted


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.model = ''  # DIR: the model directory of round 0 (a training workdir or a python -m vitclip.convert output).
  c.dataset = 'shapes'  # A classification data set (shapes, or a class-folder import) with the two splits below.
  c.feature = 'label'  # Its ClassLabel feature that names the class: shapes has 'label' (shape) and 'color'.
  c.data_dir = ''  # Where `dataset` lives; '' = DIR's data.data_dir (its default: $TFDS_DATA_DIR, ~/tensorflow_datasets).
  # The unlabelled pool: its images are pseudo-labelled, its labels only score the selection (precision). The
  # test split's labels score every round. The same split for both is the transductive setting.
  c.pool_split = 'test'
  c.pool_max_examples = 0  # The pool's first N images (0: all); e.g. a part of a large train split.
  c.test_split = 'test'
  c.rounds = 3  # R: rounds of predict -> select -> fine-tune.
  # K_r, the pseudo-labels per class of round r: k_schedule when given (one entry per round), else
  # round(k_first * k_growth ** (r - 1)). A class with fewer candidates gives all it has.
  c.k_schedule = ()
  c.k_first = 32
  c.k_growth = 2.0
  c.finetune = 'configs/finetune.py'  # The fine-tuning config file; 'CURRENT,DATASET,knobs' is its argument.
  # configs/finetune.py's knobs for every round's run (its docstring): method 'contrastive' (DIR's own loss on
  # the class captions) or 'classifier' (image tower + a head initialised from zero-shot), batch, steps, lr,
  # warmup, layer_decay, towers. Small enough for a CPU: 100 steps of 64 per round.
  c.method = 'contrastive'
  c.batch = 64
  c.steps = 100
  c.lr = finetune.KNOBS['lr']
  c.warmup = 10
  c.layer_decay = finetune.KNOBS['layer_decay']
  c.towers = finetune.KNOBS['towers']
  # Prompts of the predictions, the captions and the test metric: '' = DIR's zero-shot prompts for the entry
  # (its evals.zeroshot.templates_for, e.g. shapes' colour prompts, else its templates); or a set name / '|'-list.
  c.templates = ''
  c.overrides = dotted({})  # Any other train.py field of every round's run, as {'optim.weight_decay': 0.1}.
  return c
