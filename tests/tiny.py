"""A seconds-sized configuration of the shapes demo shared by the end-to-end and sharding tests, and what the
tests read from its runs."""

import jax
import numpy as np
import optax

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


def first_update_gradient(run, opt_state, grad_norm):
  """The gradient of a fresh state's first update, from Adam's first moment in the `opt_state` after it:
  mu = (1 - b1) x min(1, clip / |g|) x g, with |g| the step's reported (unclipped) `grad_norm`."""
  optim = run.config.optim
  clipped = min(1.0, optim.clip_norm / float(grad_norm)) if optim.clip_norm > 0 else 1.0
  (adam,) = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
  return jax.tree.map(lambda m: np.asarray(m) / ((1 - optim.b1) * clipped), adam.mu)
