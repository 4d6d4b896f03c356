"""Helpers of the experiment configs: the knobs an ablation turns, applied the same way everywhere."""

# Knobs of the real-data configs (`configs/clip_b16.py:data=NAME,batch=4096,...`); each config sets its defaults.
ABLATION_KNOBS = ('data', 'batch', 'steps', 'lr', 'warmup', 'loss', 'impl', 'res', 'dtype', 'remat')


def apply_knobs(c, k):
  """Sets the fields of config `c` that the knobs `k` (a parsed arg, see vitclip.config.parse_arg) name."""
  c.data.name = k.data
  c.batch_size, c.total_steps = k.batch, k.steps
  c.optim.lr, c.optim.warmup_steps = k.lr, k.warmup
  c.loss.kind, c.loss.impl = k.loss, k.impl
  c.model.image.image_size = k.res
  c.model.dtype, c.model.remat_policy = k.dtype, k.remat
  return c
