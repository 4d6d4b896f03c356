"""Classifier fine-tuning: the image tower plus a linear head on its normalised embedding, cross-entropy on labels.

  logits [B, C] = l2_normalize(image tower(x)) [B, D] @ head.kernel [D, C] + head.bias [C]

The head starts as the zero-shot classifier (WiSE-FT, Wortsman et al. 2022; FLYP and LP-FT start the same way):
kernel = t · the prompt-ensembled class embeddings of the text tower (`evaluators.common.build_classifier`),
bias = 0, so step 0 predicts exactly what zero-shot classification does. The params are the model's plus
'head'; only 'img' and 'head' train (`config.resolve` freezes the rest), so the text tower in the checkpoint
stays the one the head came from.

WiSE-FT evaluates the weight-space mix θ_α = (1 - α) θ_0 + α θ_ft of the zero-shot model θ_0 (the image tower of
`config.init_from` and the zero-shot head) and the fine-tuned one (`vitclip/evaluators/classifier.py`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vitclip.models import l2_normalize, logit_params

HEAD = 'head'  # Top-level params of the classifier head.
TRAINED = ('img', HEAD)  # Top-level params a classifier fine-tuning run trains.


def init_head(num_classes: int, dim: int) -> dict:
  """Zero head params (replaced by `zero_shot_head` before training starts)."""
  return {'kernel': jnp.zeros((dim, num_classes), jnp.float32), 'bias': jnp.zeros((num_classes,), jnp.float32)}


def zero_shot_head(class_embeddings: np.ndarray, params) -> dict:
  """The head that reproduces zero-shot logits t · cos(image, class).

  Args:
    class_embeddings: float32 [C, D], L2-normalised rows (`evaluators.common.build_classifier`).
    params: the model's params (their logit scale t).
  """
  t, _ = logit_params(params)
  return {'kernel': jnp.asarray(class_embeddings.T, jnp.float32) * t,
          'bias': jnp.zeros((class_embeddings.shape[0],), jnp.float32)}


def logits(model, params, images) -> jax.Array:
  """images float [B, H, W, 3] -> float32 logits [B, C] (module docstring)."""
  z = l2_normalize(model.apply({'params': params}, images, method='embed_image'))
  head = params[HEAD]
  return z @ head['kernel'] + head['bias']


def loss_fn(model, label_smoothing: float):
  """`(params, batch) -> (loss, {'train_top1': accuracy})`: mean cross-entropy on batch['label'] int32 [B]
  (with label smoothing ε: targets (1 - ε) one-hot + ε / C)."""
  def loss(params, batch):
    out = logits(model, params, batch['image'])
    targets = optax.smooth_labels(jax.nn.one_hot(batch['label'], out.shape[-1]), label_smoothing)
    ce = optax.softmax_cross_entropy(out, targets).mean()
    return ce, {'train_top1': jnp.mean(out.argmax(-1) == batch['label'])}
  return loss


def wise(zero_shot, fine_tuned, alpha: float):
  """WiSE-FT: (1 - α) · zero_shot + α · fine_tuned, leaf by leaf (α = 0: zero-shot, 1: fine-tuned)."""
  return jax.tree.map(lambda a, b: (1 - alpha) * a + alpha * b, zero_shot, fine_tuned)
