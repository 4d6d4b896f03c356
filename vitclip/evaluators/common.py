"""What every evaluator shares: the model, its params, the mesh, and batched, sharded encoders."""

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vitclip import sharding
from vitclip.data import pipeline
from vitclip.tokenizer import Tokenizer


@dataclasses.dataclass
class EvalContext:
  """Everything an evaluator needs. Evaluators are `fn(ctx, eval_cfg) -> {'<evaluator>/<dataset>/<metric>': v}`."""
  config: Any
  model: Any
  params: Any
  tokenizer: Tokenizer
  mesh: Any
  workdir: str
  data_dir: str

  @property
  def batch_size(self) -> int:
    """Eval batch rounded up to a multiple of the batch-parallel devices."""
    par = int(np.prod([self.mesh.shape[a] for a in sharding.batch_axes(self.mesh)]))
    return -(-self.config.evals.batch_size // par) * par

  @functools.cached_property
  def _encode_image(self):
    return jax.jit(lambda p, x: self.model.apply({'params': p}, x, method='encode_image'),
                   out_shardings=sharding.batch_sharding(self.mesh))

  @functools.cached_property
  def _encode_text(self):
    return jax.jit(lambda p, x: self.model.apply({'params': p}, x, method='encode_text'),
                   out_shardings=sharding.batch_sharding(self.mesh))

  def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
    """N strings -> float32 [N, D] L2-normalized, in padded batches sharded over the mesh."""
    ids = self.tokenizer.encode(texts)
    out = []
    bs = self.batch_size
    for start in range(0, len(ids), bs):
      chunk = ids[start:start + bs]
      padded = np.pad(chunk, ((0, bs - len(chunk)), (0, 0)), constant_values=self.tokenizer.pad_id)
      batch = jax.make_array_from_process_local_data(sharding.batch_sharding(self.mesh), _local(padded))
      out.append(np.asarray(_gather(self._encode_text(self.params, batch)))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.config.model.embed_dim), np.float32)

  def encode_image_batch(self, images: jax.Array) -> np.ndarray:
    """images: [B, S, S, 3] float32 sharded over the batch axes -> host float32 [B, D]."""
    return np.asarray(_gather(self._encode_image(self.params, images)))

  def image_spec(self) -> pipeline.ImageSpec:
    return pipeline.ImageSpec.from_config(self.config, train=False)


def _local(global_rows: np.ndarray) -> np.ndarray:
  """This process's slice of host-replicated rows (every process holds the same padded batch)."""
  n = len(global_rows) // jax.process_count()
  return global_rows[jax.process_index() * n:(jax.process_index() + 1) * n]


def _gather(x: jax.Array) -> jax.Array:
  """Global array -> fully addressable on every process (no-op on one process)."""
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(x, tiled=True)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
  """logits [N, C], labels [N] -> fraction of rows whose label is among the k largest logits."""
  k = min(k, logits.shape[1])
  topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
  return float(np.mean(np.any(topk == labels[:, None], axis=1)))


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def jnp_l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)
