r"""Transfer comparison on the shapes world: each model by shape ('label') and by colour, zero-shot, linear and
k-shot probes, contrastive and classifier fine-tuning.

  python -m vitclip.transfer --config configs/transfer_shapes.py --workdir /tmp/transfer \
      --config.models="softmax=/tmp/shapes_softmax,sigmoid=/tmp/shapes_sigmoid"
  python -m vitclip.transfer --config configs/transfer_shapes.py --workdir /tmp/transfer --config.models=... \
      --config.features="('color',)" --config.contrastive.steps=50 --print_commands

This file declares every field a transfer config has (vitclip/transfer.py reads them; its docstring says what
each protocol runs); other transfer configs start from it. Overrides tables are flat dotted keys, as on the
command line of train.py / eval.py.
"""

import ml_collections

from configs import base, finetune
from configs.ablation_shapes import dotted


def fine_tuning(**knobs) -> ml_collections.ConfigDict:
  """A fine-tuning protocol's settings: the knobs of configs/finetune.py (batch, steps, lr, warmup, templates,
  towers, ...; its defaults unless given) but feature and method, which the transfer sets, and overrides (any other
  train.py field, as --config.KEY=VALUE of every run of the protocol)."""
  c = ml_collections.ConfigDict({k: v for k, v in finetune.KNOBS.items() if k not in ('feature', 'method')})
  c.update(knobs)
  c.overrides = dotted({})
  return c


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  # 'name=DIR,name=DIR': the model directories to compare (training workdirs or python -m vitclip.convert
  # outputs, each with config.json and a checkpoint). The name labels the report's rows and OUT/<name>/.
  c.models = ''
  c.dataset = 'shapes'  # A classification data set with train and test splits (shapes, a class-folder import).
  c.features = ('label', 'color')  # Its ClassLabel features, a row each: shapes has 'label' (shape) and 'color'.
  c.data_dir = ''  # --config.data.data_dir of every command; '' = each command's own (shapes: the model's).
  # Which protocols run, of 'probe' (zero-shot + linear / k-shot probes, eval.py on the model as it is),
  # 'contrastive' and 'classifier' (configs/finetune.py runs with method contrastive / classifier).
  c.protocols = ('probe', 'contrastive', 'classifier')
  c.finetune = 'configs/finetune.py'  # The fine-tuning config file; 'DIR,DATASET,knobs' is its argument.

  # The probe: eval.py --checkpoint_dir DIR with the model's own evaluation settings (its zero-shot prompts) and
  # these; every protocol scores the test split.
  probe = base.get_config().evals.linear_probe
  c.probe = ml_collections.ConfigDict()
  c.probe.shots = probe.shots  # k-shot probes; the accuracy table shows the largest k (16), the k-shot table all.
  c.probe.draws = probe.draws  # Seeded draws per k (mean ± std).
  c.probe.val_split = probe.val_split  # Held-out data for the l2 search; '' = a stratified part of train.
  # Per split, a seeded subset of at most this many images (0 = all): the full probe's l2 search on 50k
  # features of a feature the towers barely separate (colour) takes L-BFGS the longest.
  c.probe.max_examples = probe.max_examples
  c.probe.overrides = dotted({})  # Any other eval.py field, e.g. {'evals.linear_probe.l2_grid': (1e-4, 1e-2)}.

  c.contrastive = fine_tuning()
  c.classifier = fine_tuning()
  c.wise_alpha = 0.5  # The WiSE-FT mix the accuracy table shows (every evaluated alpha: the WiSE-FT table).
  # Per-device memory of each fine-tuning run's compiled train step: on `memory_devices` simulated CPU devices,
  # or with 0 on the devices the runs train on (as vitclip.sweep).
  c.memory_devices = 0
  return c
