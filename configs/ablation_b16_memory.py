r"""Memory study: SigLIP B/16 at a 32k batch against CLIP and A-CLIP B/16 at 4,096, on 32 simulated devices
with the ring loss. Each cell's train step is compiled at its real scale; nothing is trained or read.

  python -m vitclip.sweep --config configs/ablation_b16_memory.py --workdir /tmp/b16_memory

Each method keeps its published towers: SigLIP's from configs/siglip_b16.py, CLIP's and A-CLIP's from
configs/clip_b16.py (bfloat16 matmuls, full remat, as those configs train), scanned over layers (below).
Fields: configs/ablation_shapes.py.
"""

from configs import ablation_shapes


def get_config(arg=None):
  del arg
  c = ablation_shapes.get_config()
  c.base = 'configs/clip_b16.py'
  c.base_for = {'siglip': 'configs/siglip_b16.py'}
  # Scan over layers: on XLA:CPU, which compiles these cells, remat frees the blocks' activations only under a
  # scan (B/16 + B, batch 128 on one device, bfloat16: temp 5.4 GiB scanned with full remat, 38.6 GiB unrolled
  # with full remat, 38.0 GiB unrolled without remat). The scan changes no result, only the program's layout.
  c.overrides = ablation_shapes.dotted({'loss.impl': 'ring', 'model.scan': True})
  c.methods = {m: ablation_shapes.dotted(ablation_shapes.METHODS[m]) for m in ('siglip', 'clip', 'aclip')}
  c.axes.method = ('siglip', 'clip', 'aclip')
  c.axes.batch = (4096, 32768)
  c.batches_for = {'siglip': (32768,), 'clip': (4096,), 'aclip': (4096,)}
  c.extra_seeds = {}
  c.examples_seen = 32768 * 10  # Only the schedule's length: it does not change the compiled step's memory.
  c.memory_only = True
  c.memory_devices = 32
  return c
