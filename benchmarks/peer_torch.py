r"""CPU train-step throughput of vitclip against its most common peer, Hugging Face transformers' CLIPModel in
torch, on the same CLIP architecture and step, measured side by side in one command.

  python benchmarks/peer_torch.py [--batch 256] [--threads 2] [--steps 20] [--rounds 5] [--json OUT]

The architecture (OpenAI CLIP's, at a CPU size): image tower tiny/8 (width 96, 3 blocks, 3 heads, MLP 384) at
64 px with a patchify stem without bias, CLS token, learned position embedding, ln_pre and QuickGELU; text tower
tiny (the same widths), 16 tokens, causal, pooled at the EOS token; embeddings of 128; float32; the softmax
(CLIP) loss; AdamW (b2 0.95, weight decay 1e-4: torch's on every param, vitclip's on the kernels; no clipping).
Inputs are random arrays already in memory, so both numbers are the step alone. vitclip runs `benchmarks/step.py`
on the same architecture (VITCLIP_OVERRIDES) in a subprocess, with uint8 images as its pipeline feeds them; torch
gets float32 pixels, as transformers' image processor hands them over.

The two alternate `--rounds` times. The report gives the ratio of each one's best round (a slow moment of the
machine does not decide it) and the median over rounds of the ratio within a round (the two measured a minute
apart): on a shared 2-core machine single rounds vary by ±10%.

torch and transformers come from requirements-convert.txt.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH, DEPTH, HEADS, MLP, EMBED, IMAGE, PATCH, TOKENS, VOCAB = 96, 3, 3, 384, 128, 64, 8, 16, 1000
LR, B1, B2, EPS, WEIGHT_DECAY = 1e-3, 0.9, 0.95, 1e-8, 1e-4

# configs/shapes.py changed into the same architecture and step as the torch model below.
VITCLIP_OVERRIDES = {
    'model.image.variant': 'tiny/8', 'model.image.image_size': IMAGE, 'model.image.stem': 'patch',
    'model.image.patch_bias': False, 'model.image.pool': 'tok', 'model.image.cls_token': True,
    'model.image.posemb': 'learn', 'model.image.ln_pre': True, 'model.image.act': 'quick_gelu',
    'model.image.ln_eps': 1e-5, 'model.image.attention_radius': 0,
    'model.text.variant': 'tiny', 'model.text.max_len': TOKENS, 'model.text.act': 'quick_gelu',
    'model.text.ln_eps': 1e-5, 'model.text.vocab_size': VOCAB, 'model.text.pool': 'eos', 'model.text.causal': True,
    'model.embed_dim': EMBED, 'model.dtype': 'float32', 'loss.kind': 'softmax', 'loss.impl': 'dense',
    'optim.lr': LR, 'optim.b1': B1, 'optim.b2': B2, 'optim.eps': EPS, 'optim.weight_decay': WEIGHT_DECAY,
    'optim.clip_norm': 0.0, 'optim.warmup_steps': 0,
}


def torch_step_rate(batch: int, threads: int, steps: int, warmup: int) -> dict:
  """samples/s of transformers' CLIPModel: forward with return_loss, backward, AdamW step."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  tower = dict(hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
               hidden_act='quick_gelu')
  config = transformers.CLIPConfig(
      text_config=dict(tower, vocab_size=VOCAB, max_position_embeddings=TOKENS, eos_token_id=2),
      vision_config=dict(tower, image_size=IMAGE, patch_size=PATCH), projection_dim=EMBED)
  model = transformers.CLIPModel(config).train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WEIGHT_DECAY)
  pixels = torch.randn(batch, 3, IMAGE, IMAGE)
  ids = torch.randint(3, VOCAB, (batch, TOKENS))
  ids[:, -1] = 2  # EOS last, where both models pool.

  def step():
    loss = model(input_ids=ids, pixel_values=pixels, return_loss=True).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())

  for _ in range(warmup):
    step()
  start = time.perf_counter()
  for _ in range(steps):
    loss = step()
  seconds = (time.perf_counter() - start) / steps
  return {'samples_per_s': batch / seconds, 'step_s': seconds, 'final_loss': loss,
          'params': sum(p.numel() for p in model.parameters()), 'torch': torch.__version__,
          'transformers': transformers.__version__, 'threads': threads}


def vitclip_step_rate(batch: int, steps: int, warmup: int) -> dict:
  """benchmarks/step.py on VITCLIP_OVERRIDES (a subprocess: jax picks its devices and threads at start)."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'step.json')
    flags = [f'--config.{k}={v}' for k, v in {**VITCLIP_OVERRIDES, 'batch_size': batch}.items()]
    cmd = [sys.executable, os.path.join(ROOT, 'benchmarks', 'step.py'), '--config', 'configs/shapes.py', *flags,
           '--steps', str(steps), '--warmup', str(warmup), '--json', out]
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # One CPU device, as a user's run has.
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
      return json.load(f)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--threads', type=int, default=os.cpu_count(), help='torch threads (default: all cores)')
  parser.add_argument('--steps', type=int, default=20, help='timed steps per round')
  parser.add_argument('--warmup', type=int, default=3, help='untimed steps per round')
  parser.add_argument('--rounds', type=int, default=5, help='alternating rounds of each')
  parser.add_argument('--json', default='', help='write the results here')
  args = parser.parse_args()
  rounds = {'vitclip': [], 'torch': []}
  for i in range(args.rounds):
    rounds['vitclip'].append(vitclip_step_rate(args.batch, args.steps, args.warmup))
    rounds['torch'].append(torch_step_rate(args.batch, args.threads, args.steps, args.warmup))
    print(f'round {i + 1}: vitclip {rounds["vitclip"][-1]["samples_per_s"]:.1f} samples/s, transformers '
          f'{rounds["torch"][-1]["samples_per_s"]:.1f} samples/s', flush=True)
  best = {k: max(v, key=lambda r: r['samples_per_s']) for k, v in rounds.items()}
  result = {
      'batch': args.batch, 'cpu_count': os.cpu_count(), 'overrides': VITCLIP_OVERRIDES,
      'vitclip_samples_per_s': [r['samples_per_s'] for r in rounds['vitclip']],
      'torch_samples_per_s': [r['samples_per_s'] for r in rounds['torch']],
      'ratio_best': best['vitclip']['samples_per_s'] / best['torch']['samples_per_s'],
      'ratio_median_of_rounds': float(np.median([v['samples_per_s'] / t['samples_per_s']
                                                 for v, t in zip(rounds['vitclip'], rounds['torch'])])),
      'vitclip': best['vitclip'], 'torch': best['torch'],
  }
  print(f'vitclip / transformers: {result["ratio_best"]:.2f}x (best rounds), '
        f'{result["ratio_median_of_rounds"]:.2f}x (median of the rounds\' ratios)')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
