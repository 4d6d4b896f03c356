"""A seconds-sized configuration of the shapes demo shared by the end-to-end and sharding tests."""

from configs import shapes


def override(c, **overrides):
  """Sets dotted keys ('model.image.variant') of ConfigDict `c`, as --config.x.y=v does; returns `c`."""
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def tiny_config(data_dir: str, **overrides):
  """micro towers at 32 px, a small generated data set under `data_dir`, a few steps."""
  c = shapes.get_config()
  c.data.data_dir = data_dir
  c.data.shapes.update(image_size=32, num_train=512, num_validation=64, num_test=64)
  c.model.image.update(variant='micro/8', image_size=32)
  c.model.text.update(variant='micro', max_len=12)
  c.model.embed_dim = 32
  c.tokenizer.vocab_size = 300
  c.batch_size = 16
  c.total_steps = 8
  c.optim.warmup_steps = 2
  c.log_every = 1
  c.ckpt_every = 4
  c.evals.batch_size = 32
  c.evals.zeroshot.datasets = ('shapes',)
  return override(c, **overrides)


def get_config(arg=None):
  """As a config file: `--config tests/tiny.py:DATA_DIR`."""
  return tiny_config(arg or '')
