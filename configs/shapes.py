"""CPU-sized default: train on the generated `shapes` world in minutes, then zero-shot classify its shapes.

  python train.py --config configs/shapes.py --workdir /tmp/shapes
  python train.py --config configs/shapes.py:sigmoid --workdir /tmp/shapes_sigmoid
  python train.py --config configs/shapes.py:data=my_photos --workdir /tmp/mine   # the same model, own data

`arg`: 'softmax' (default) or 'sigmoid' (`--config.loss.kind=sigmoid` is the same), or KEY=VALUE knobs
`loss=sigmoid,data=NAME`. With another data set the evaluation follows it: retrieval on its validation split
(if it has one) instead of the shapes zero-shot and dense probing, which only a shapes model can pass. The
logit scale/bias init follows the loss kind unless set (see configs/base.py).
"""

from configs import base
from vitclip import config as config_lib
from vitclip.data import shapes as shapes_data

KNOBS = dict(loss='softmax', data='shapes')

# Prompts of the shapes world: its captions are short phrases, not photo descriptions.
TEMPLATES = ('a {}.', 'a small {}.', 'a large {}.', 'there is a {}.', 'a picture of a {}.')


def get_config(arg=None):
  k = config_lib.parse_arg(f'loss={arg}' if arg in ('softmax', 'sigmoid') else arg, **KNOBS)
  c = base.get_config()
  c.data.name = k.data
  # Many small steps: a 2-core CPU runs batches of 64 nearly as fast per example as batches of 256, so the same
  # wall-clock time buys 4x the updates, which is what makes this short run reliable (README, Quickstart).
  c.total_steps = 1800
  c.batch_size = 64
  c.data.shapes.image_size = 48
  # No crop augmentation: 1800 x 64 examples see each of the 50k generated scenes about 2.3 times, and on 2
  # cores the per-example PIL crop takes CPU time from the train step.
  c.data.crop_scale = (1.0, 1.0)

  c.tokenizer.vocab_size = 512
  c.model.embed_dim = 128
  c.model.image.variant = 'tiny/8'
  c.model.image.image_size = 48
  # A convolutional stem (ViTc) in front of global average pooling over fixed sin-cos position embeddings: on
  # this world it learns much faster than a patchify stem or a CLS token; 48 px images (6 x 6 tokens) win back
  # the stem's extra step time. GAP also makes each patch's projected feature a summand of the image embedding,
  # which dense probing reads.
  c.model.image.update(stem='conv', pool='gap', posemb='sincos2d', cls_token=False)
  # Local attention (radius 1: each patch token attends to its 3 x 3 neighbourhood in every block). With global
  # attention this GAP tower writes the scene's class into the background patches, and dense probing cannot find
  # the background (README, "Evaluating").
  c.model.image.attention_radius = 1
  c.model.text.variant = 'tiny'
  c.model.text.max_len = 16

  c.optim.lr = 2e-3
  c.optim.warmup_steps = 200
  c.optim.weight_decay = 1e-4

  c.log_every = 100
  c.ckpt_every = 300
  c.evals.names = ('zeroshot',)
  c.evals.batch_size = 500
  # Shape zero-shot on the test split; 'shapes:color' adds colour zero-shot (result key 'shapes_color'), whose
  # prompts ensemble every shape: 'a red circle.', 'a red square.', ...
  c.evals.zeroshot.datasets = ('shapes',)
  c.evals.zeroshot.templates = '|'.join(TEMPLATES)
  c.evals.zeroshot.templates_for.shapes_color = '|'.join(f'a {{}} {s}.' for s in shapes_data.SHAPE_NAMES)
  # Dense probing: the best setting measured on this model (README "Evaluating"): plain last-layer patch tokens
  # with Key Smoothing and Prompt Denoising, scores averaged over six input sizes (2/3x to 8/3x the 48 px
  # training size).
  c.evals.dense.update(datasets=('shapes',), templates='|'.join(TEMPLATES), method='none', key_smoothing=True,
                       prompt_denoising=True, input_sizes=(32, 40, 48, 64, 96, 128),
                       background_prompts=('background', 'grey background', 'texture', 'noise'))
  if k.data != 'shapes':  # Evaluation follows the training data (configs/base.py): retrieval on it.
    c.evals.names = ('retrieval',)
    c.evals.zeroshot.datasets = c.evals.dense.datasets = ()
  c.loss.kind = k.loss
  # SigLIP's t = 10, b = -10 suit ~32k batches and long runs. At small batches b = -10 is far too negative: the
  # negatives then carry almost no gradient and b, moving ~lr per step, never recovers in a short run. b = -4 is
  # about -log(batch) at 64, the bias at which an untrained model's positive and negatives weigh the same (the
  # sweep that chose it: README, "Configs and overrides").
  c.loss.init_by_kind.sigmoid.t_init = 1 / 0.07
  c.loss.init_by_kind.sigmoid.b_init = -4.0
  return c
