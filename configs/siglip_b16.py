r"""SigLIP ViT-B/16 (Zhai et al. 2023) on a real image-text data set, with the knobs an ablation turns.

  python train.py --config configs/siglip_b16.py:data=my_photos --workdir /runs/siglip_b16
  python train.py --config configs/siglip_b16.py:data=laion_subset,batch=32768,steps=20000 --workdir /runs/sig32k
  # 32,768 on 32 devices of 32 GiB without gradient caching: scan over layers, attention and MLP in chunks
  # (README, "Memory at 32k": the per-device peak of a B/16 + B step with and without them)
  python train.py --config configs/siglip_b16.py:data=laion_subset --workdir /runs/sig32k_chunked \
      --config.model.scan=True --config.model.attention_chunk=64 --config.model.mlp_chunk=64

`arg`: comma-separated KEY=VALUE (see KNOBS): data, batch, steps, lr, warmup, loss (sigmoid | softmax), impl,
res, dtype, remat. Every field stays overridable with --config.x=y. The architecture is big_vision's SigLIP:
no CLS token, a learned position embedding, MAP-head pooling whose output is the embedding, a bidirectional B text tower of 64 tokens pooled at the last position, t' = log 10 and b = -10, and
Adam's b2 = 0.95 for stability at large batches.
"""

from configs import base, common
from vitclip import config as config_lib

KNOBS = dict(  # common.ABLATION_KNOBS with this config's defaults.
    data='', batch=32_768, steps=10_000, lr=1e-3, warmup=1_000, loss='sigmoid', impl='ring', res=224,
    dtype='bfloat16', remat='full')


def get_config(arg=None):
  k = config_lib.parse_arg(arg, **KNOBS)
  c = common.apply_knobs(base.get_config(), k)
  c.optim.b2, c.optim.weight_decay = 0.95, 1e-4
  c.model.embed_dim = 768
  c.model.image.update(variant='B/16', cls_token=False, posemb='learn', pool='map',
                       act='gelu_tanh', head='none')
  c.model.text.update(variant='B', max_len=64, causal=False, mask_pad=False, pool='final', act='gelu_tanh',
                      head='linear', head_bias=True)
  c.tokenizer.vocab_size = 32_000
  c.tokenizer.train_captions = 1_000_000
  c.log_every, c.ckpt_every = 100, 1_000
  return c
