r"""Batch-size ablation on the shapes world: CLIP, SigLIP, A-CLIP and FLIP at batches 16 to 1,024, every cell
seeing the same number of training examples.

  python -m vitclip.sweep --config configs/ablation_shapes.py --workdir /tmp/ablation
  python -m vitclip.sweep --config configs/ablation_shapes.py --workdir /tmp/ablation --print_commands
  python -m vitclip.sweep --config configs/ablation_shapes.py --workdir /tmp/ablation --report_only
  python -m vitclip.sweep --config configs/ablation_shapes.py --workdir /tmp/a --config.examples_seen=16384

This file declares every field a sweep config has (vitclip/sweep.py reads them; its docstring says how a cell
is made); other sweep configs start from it. Overrides are flat dotted keys, as on train.py's command line.
"""

import ml_collections

# Method name -> the overrides that make it (flat dotted keys). FLIP and A-CLIP train with the softmax loss.
METHODS = {
    'clip': {'loss.kind': 'softmax'},
    'siglip': {'loss.kind': 'sigmoid'},
    'aclip': {'loss.kind': 'softmax', 'aclip.enabled': True},
    'flip': {'loss.kind': 'softmax', 'flip.mask_ratio': 0.5},
    'flip75': {'loss.kind': 'softmax', 'flip.mask_ratio': 0.75},
}


def dotted(overrides: dict) -> ml_collections.ConfigDict:
  """A table of flat 'a.b' keys (a plain ConfigDict refuses dots in field names)."""
  return ml_collections.ConfigDict(overrides, allow_dotted_keys=True)


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.base = 'configs/shapes.py'  # The config file (with an optional ':arg') every cell starts from.
  c.base_for = {}  # method -> another base config file for that method's cells.
  # Held fixed for every cell. The Quickstart's towers at 32 px instead of 48 (a 4 x 4 token grid), so the
  # whole study runs in about an hour on 2 cores. A-CLIP keeps single tokens (2 x 2 units would leave 4
  # choices on this grid) and sizes its MLPs to the 128-wide embedding (the paper's 4096 / 256 suit B/16).
  # Evaluation: zero-shot by shape and by colour on the test split, retrieval on 500 validation images.
  c.overrides = dotted({
      'data.shapes.image_size': 32, 'model.image.image_size': 32,
      'aclip.unit': 1, 'aclip.mlp_hidden': 512, 'aclip.mlp_out': 128,
      'evals.names': ('zeroshot', 'retrieval'), 'evals.zeroshot.datasets': ('shapes', 'shapes:color'),
      'evals.retrieval.max_examples': 500,
  })
  c.methods = ml_collections.ConfigDict({name: dotted(o) for name, o in METHODS.items()})

  c.axes = ml_collections.ConfigDict()
  c.axes.method = tuple(METHODS)  # Rows of the report's tables, in this order.
  c.axes.batch = (16, 32, 64, 256, 1024)
  c.axes.seed = (0,)  # config.seed: model init and per-step randomness (the data order stays fixed).
  # batch -> more seeds for that batch's cells: the seed spread where it matters most, at the ends of the axis.
  c.extra_seeds = {16: (1,), 1024: (1,)}
  # The methods that get the extra seeds (() = all): here the softmax / sigmoid pair whose small-batch gap is the
  # question; A-CLIP and FLIP run one seed per batch to keep the study within its time.
  c.extra_seeds_methods = ('clip', 'siglip')
  # method -> the batches of that method's cells, instead of axes.batch. A-CLIP and FLIP skip batch 32 (the
  # slowest cells of the study); FLIP at r = 0.75 runs at the reference batch only.
  c.batches_for = {'aclip': (16, 64, 256, 1024), 'flip': (16, 64, 256, 1024), 'flip75': (64,)}

  # Held fixed across batches: the examples seen (steps = examples_seen // batch, so batches must divide it).
  c.examples_seen = 24_576
  # lr = the base config's optim.lr x (batch / lr_reference_batch) ** p: 'none' p = 0, 'linear' 1, 'sqrt' 1/2.
  c.lr_rule = 'sqrt'
  c.lr_reference_batch = 64  # The batch the base lr was tuned at (configs/shapes.py).
  c.warmup_fraction = 0.1  # Warmup steps as a fraction of the cell's steps.
  c.logs_per_cell = 20  # log_every = steps // this: metrics.jsonl rows, from which samples/s is read.
  c.ckpts_per_cell = 4  # ckpt_every = ceil(steps / this): a killed cell resumes from its last checkpoint.

  # Memory-only: compile each cell's train step at its real scale on `memory_devices` simulated CPU devices,
  # train nothing, report memory. Training studies measure each cell's compiled step too, on memory_devices
  # simulated devices, or with 0 on the devices the runs train on.
  c.memory_only = False
  c.memory_devices = 0
  return c
