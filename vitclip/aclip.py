"""A-CLIP (Yang et al. 2023, "Attentive Mask CLIP"): attentive token masking with self-supervised auxiliaries.

One training step (config.aclip; paper defaults in configs/base.py):

  1. Two random square crops of each image (`view_crop_scale`) and their union box.
  2. The EMA image tower embeds the union view (at `score_scale` of the resolution: A-CLIP-eff at 0.5) and
     scores its patches by the attention they receive from the pooling query, averaged over layers and heads
     (VisionTransformer.token_scores). Nothing here is differentiated.
  3. The union score map is resampled onto each view's token grid; each view keeps the `keep_ratio` best-scored
     tokens in unit x unit blocks (`selection`: high / low / mixture; vitclip/masking.py).
  4. The online image tower embeds each masked view. The loss is
       clip_weight · Σ_views L_it(view, text)                        (the run's contrastive_loss: any kind/impl)
     + simclr_weight · L_simclr(proj(view 1), proj(view 2))          (the two *different* views)
     + byol_weight · mean_views (2 − 2 cos(pred(view), EMA(union)))  (BYOL, normalized regression)
  5. After the optimizer update the EMA tower follows the image tower with a momentum rising from
     `ema_momentum` to `ema_momentum_end` on a cosine over the run (`ema_momentum`, `update_ema`).

The SimCLR term is the cross-view InfoNCE at temperature τ, computed by `losses.contrastive_loss(kind='softmax')`
with t = 1/τ and the run's `loss.impl`, so it shards like the image-text loss (ring: memory flat in the device
count); unlike SLIP's NT-Xent it has no same-view negatives. The projection and predictor MLPs use LayerNorm
where SLIP / BYOL use BatchNorm: no batch statistics to synchronise across devices, and a step stays a pure
function of its inputs.

The EMA image params live in `TrainState.ema` (checkpointed: resume stays exact); the heads in params['aclip'].
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitclip import losses, masking
from vitclip.models import TwoTower, l2_normalize, logit_params


class ProjectionMLP(nn.Module):
  """Dense(hidden) -> LayerNorm -> GELU -> Dense(out): [..., D] -> [..., out] float32."""
  hidden: int
  out: int

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.hidden, name='hidden')(x.astype(jnp.float32))
    x = nn.gelu(nn.LayerNorm(name='norm')(x))
    return nn.Dense(self.out, name='out')(x)


class Heads(nn.Module):
  """The SimCLR projection and the BYOL predictor, both on the image tower's output [B, D]."""
  hidden: int
  simclr_out: int
  embed_dim: int

  @nn.compact
  def __call__(self, x):
    """x: [B, D] -> (SimCLR projection [B, simclr_out], BYOL prediction [B, embed_dim]), float32."""
    return (ProjectionMLP(self.hidden, self.simclr_out, name='simclr')(x),
            ProjectionMLP(self.hidden, self.embed_dim, name='byol')(x))


def heads_from_config(config) -> Heads:
  return Heads(hidden=config.aclip.mlp_hidden, simclr_out=config.aclip.mlp_out, embed_dim=config.model.embed_dim)


def init_heads(config, rng):
  """params['aclip'] of a fresh A-CLIP run."""
  return heads_from_config(config).init(rng, jnp.zeros((1, config.model.embed_dim), jnp.float32))['params']


def ema_momentum(aclip_config, step, total_steps: int) -> jax.Array:
  """Momentum at `step`: ema_momentum at 0 rising to ema_momentum_end at total_steps on a half cosine (BYOL)."""
  start, end = aclip_config.ema_momentum, aclip_config.ema_momentum_end
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
  return end - (end - start) * (jnp.cos(math.pi * progress) + 1.0) / 2.0


def update_ema(ema, params, momentum):
  """ema ← momentum · ema + (1 − momentum) · params, leaf by leaf."""
  return jax.tree.map(lambda e, p: momentum * e + (1.0 - momentum) * p, ema, params)


def patch_grid(model: TwoTower, image_size: int | None = None) -> int:
  """Patch tokens per side of the image tower at `image_size` (default: its configured size)."""
  return (image_size or model.img.image_size) // model.img.patch_size


def loss_terms(model: TwoTower, config, mesh, loss_fn):
  """`(params, ema, batch, rng) -> (loss, terms)`: the A-CLIP objective of one step (module docstring).

  params: TwoTower params plus 'aclip' (the heads); ema: the EMA image tower params; batch: {'image' [B, S, S,
  3], 'tokens' [B, L]}; terms: {'clip', 'simclr', 'byol'} float32 scalars before weighting.
  """
  a = config.aclip
  size = model.img.image_size
  grid = patch_grid(model)
  score_size = max(model.img.patch_size, round(size * a.score_scale))
  heads = heads_from_config(config)
  simclr = functools.partial(losses.contrastive_loss, kind='softmax', impl=config.loss.impl, mesh=mesh)
  embed = functools.partial(model.apply, method=TwoTower.embed_image)

  def objective(params, ema, batch, rng):
    images = batch['image']
    b = images.shape[0]
    k_view1, k_view2, k_sel1, k_sel2 = jax.random.split(rng, 4)
    boxes = (masking.random_boxes(k_view1, b, a.view_crop_scale), masking.random_boxes(k_view2, b, a.view_crop_scale))
    union = masking.union_box(*boxes)
    teacher = {'params': jax.lax.stop_gradient({**params, 'img': ema})}
    target, scores = embed(teacher, masking.crop_resize(images, union, score_size), return_scores=True)
    target = jax.lax.stop_gradient(l2_normalize(target))
    scores = jax.lax.stop_gradient(scores)
    _, ztxt, _ = model.apply({'params': params}, None, batch['tokens'])
    t, bias = logit_params(params)
    clip, byol, projections = 0.0, 0.0, []
    for box, key in zip(boxes, (k_sel1, k_sel2)):
      keep = masking.select_by_score(masking.scores_in_view(scores, union, box, grid), a.keep_ratio, a.unit,
                                     a.selection, key)
      h = embed({'params': params}, masking.crop_resize(images, box, size), keep=keep)
      clip += loss_fn(l2_normalize(h), ztxt, t, bias)
      projection, prediction = heads.apply({'params': params['aclip']}, h)
      projections.append(l2_normalize(projection))
      byol += jnp.mean(2.0 - 2.0 * jnp.sum(l2_normalize(prediction) * target, axis=-1)) / 2
    ssl = simclr(*projections, jnp.float32(1.0 / a.simclr_temperature))
    loss = a.clip_weight * clip + a.simclr_weight * ssl + a.byol_weight * byol
    return loss, {'clip': clip, 'simclr': ssl, 'byol': byol}

  return objective
