r"""CLIP ViT-B/16 (Radford et al. 2021) on a real image-text data set, with the knobs an ablation turns.

  python train.py --config configs/clip_b16.py:data=my_photos --workdir /runs/clip_b16
  python train.py --config configs/clip_b16.py:data=laion_subset,batch=4096,steps=20000,loss=softmax \
      --workdir /runs/clip_4k

`arg`: comma-separated KEY=VALUE (see KNOBS): data (a TFDS name prepared under the data dir, e.g. an imported
folder), batch, steps, lr, warmup, loss (softmax | sigmoid), impl (dense | gather | ring), res (image size),
dtype, remat. Every field stays overridable with --config.x=y. The architecture is OpenAI's: CLS token, learned
position embedding with ln_pre, QuickGELU, a 12-layer 512-wide causal text tower of 77 tokens pooled at EOT.
"""

from configs import base, common
from vitclip import config as config_lib

KNOBS = dict(  # common.ABLATION_KNOBS with this config's defaults.
    data='', batch=4096, steps=10_000, lr=5e-4, warmup=1_000, loss='softmax', impl='ring', res=224,
    dtype='bfloat16', remat='full')


def get_config(arg=None):
  k = config_lib.parse_arg(arg, **KNOBS)
  c = common.apply_knobs(base.get_config(), k)
  c.data.mean, c.data.std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
  c.optim.b2, c.optim.weight_decay = 0.98, 0.2  # CLIP's AdamW settings.
  c.model.embed_dim = 512
  c.model.image.update(variant='B/16', cls_token=True, posemb='learn', ln_pre=True, pool='tok',
                       act='quick_gelu', ln_eps=1e-5, patch_bias=False)
  c.model.text.update(variant='M', max_len=77, causal=True, pool='eos', act='quick_gelu', ln_eps=1e-5)
  c.tokenizer.vocab_size = 49_408  # A BPE of OpenAI's size trained on the captions; or tokenizer.path.
  c.tokenizer.train_captions = 1_000_000
  c.log_every, c.ckpt_every = 100, 1_000
  return c
