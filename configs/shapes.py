"""CPU-sized default: train on the generated `shapes` world in minutes, then zero-shot classify its shapes.

  python train.py --config configs/shapes.py --workdir /tmp/shapes
  python train.py --config configs/shapes.py:sigmoid --workdir /tmp/shapes_sigmoid

`arg` may be 'softmax' (default) or 'sigmoid'; `--config.loss.kind=sigmoid` is the same. The logit scale/bias
init follows the loss kind unless set (see configs/base.py).
"""

from configs import base


def get_config(arg=None):
  c = base.get_config()
  c.total_steps = 400  # ~11 minutes on 2 CPU cores.
  c.batch_size = 256
  c.data.shapes.image_size = 64
  c.data.crop_scale = (0.85, 1.0)

  c.tokenizer.vocab_size = 512
  c.model.embed_dim = 128
  c.model.image.variant = 'tiny/8'
  c.model.image.image_size = 64
  # Global average pooling with fixed sin-cos position embeddings (Beyer et al. 2022) learns shapes several
  # times faster than a CLS token with learned position embeddings at this data size, and makes each patch's
  # projected feature a summand of the image embedding, which dense probing reads.
  c.model.image.update(pool='gap', posemb='sincos2d', cls_token=False)
  c.model.text.variant = 'tiny'
  c.model.text.max_len = 16

  c.optim.lr = 2e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 1e-4

  c.log_every = 50
  c.ckpt_every = 100
  c.evals.batch_size = 500
  c.loss.kind = arg or 'softmax'
  return c
