"""Model-FLOP counting from jaxprs against hand counts and the published ViT-B/16 figure."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vitclip import flops, sharding
from vitclip.models import VisionTransformer


def _spec(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_matmul_einsum_and_conv_by_hand():
  assert flops.count_matmul_flops(jnp.matmul, _spec(4, 8), _spec(8, 16)) == 2 * 4 * 8 * 16
  batched = lambda a, b: jnp.einsum('bij,bjk->bik', a, b)
  assert flops.count_matmul_flops(batched, _spec(3, 4, 8), _spec(3, 8, 5)) == 2 * 3 * 4 * 8 * 5
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  # Output 2 x 4 x 4 x 5; each output element is a 3 x 3 x 3 window.
  assert flops.count_matmul_flops(conv, _spec(2, 8, 8, 3), _spec(3, 3, 3, 5)) == 2 * (2 * 4 * 4 * 5) * 27
  grouped = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME', feature_group_count=4,
                                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  assert flops.count_matmul_flops(grouped, _spec(1, 4, 4, 8), _spec(3, 3, 2, 8)) == 2 * (4 * 4 * 8) * 18


def test_elementwise_work_is_not_counted():
  assert flops.count_matmul_flops(lambda x: jnp.tanh(x).sum() * 3.0, _spec(64, 64)) == 0


def test_control_flow_and_autodiff():
  w = _spec(8, 8)

  def scanned(x, w):
    return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0]

  one = 2 * 4 * 8 * 8
  assert flops.count_matmul_flops(scanned, _spec(4, 8), w) == 5 * one
  # Forward, then one product per differentiated operand: 3x.
  loss = lambda x, w: jnp.sum(x @ w)
  assert flops.count_matmul_flops(jax.grad(loss, argnums=(0, 1)), _spec(4, 8), w) == 3 * one
  # Rematerialisation recomputes the forward product in the backward pass; the counter sees the program.
  remat_loss = lambda x, w: jnp.sum(jax.checkpoint(lambda a: jnp.sin(a @ w))(x))
  assert flops.count_matmul_flops(jax.grad(remat_loss, argnums=(0, 1)), _spec(4, 8), w) == 4 * one
  jitted = jax.jit(lambda x, w: jnp.sin(x @ w) @ w)
  assert flops.count_matmul_flops(jitted, _spec(4, 8), w) == 2 * one
  branch = lambda p, x, w: jax.lax.cond(p, lambda: x @ w @ w, lambda: x @ w)
  assert flops.count_matmul_flops(branch, jax.ShapeDtypeStruct((), jnp.bool_), _spec(4, 8), w) == 2 * one


def test_shard_map_body_counts_once_per_device():
  mesh = sharding.make_mesh([('data', -1)])
  n = mesh.size
  body = jax.shard_map(lambda a, b: a @ b, mesh=mesh, in_specs=(P('data'), P()), out_specs=P('data'))
  x = jax.ShapeDtypeStruct((4 * n, 8), jnp.float32, sharding=jax.NamedSharding(mesh, P('data')))
  assert flops.count_matmul_flops(body, x, _spec(8, 16)) == 2 * (4 * n) * 8 * 16


@pytest.mark.parametrize('variant,gmacs', [('B/16', 17.56), ('S/16', 4.60)])
def test_vit_forward_matches_published_count(variant, gmacs):
  """ViT at 224 px, 1000-way head: DeiT/timm publish 17.56 (B/16) and 4.60 (S/16) GMACs per image."""
  model = VisionTransformer(variant=variant, embed_dim=1000, head_bias=True)
  images = _spec(1, 224, 224, 3)
  params = jax.eval_shape(model.init, jax.random.key(0), images)
  counted = flops.count_matmul_flops(model.apply, params, images) / 2 / 1e9
  np.testing.assert_allclose(counted, gmacs, rtol=0.01)


def test_step_benchmark_model_flops_ignore_remat(tmp_path):
  """benchmarks/step.py: the model FLOPs (and so MFU) are those of the step without remat; XLA's own count grows
  with the recomputation. One benchmark run (remat 'full'); the remat-free step is only traced and lowered."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / 'full.json'
  one_block = {'model.image.variant': 'mu/8', 'model.text.variant': 'mu'}  # Compiles in about half the time.
  subprocess.run([sys.executable, 'benchmarks/step.py', '--config', 'tests/tiny.py',
                  *[f'--config.{k}={v}' for k, v in one_block.items()], '--config.model.remat_policy=full',
                  '--steps', '1', '--warmup', '0', '--peak_tflops', '1', '--json', str(out)],
                 cwd=root, check=True, capture_output=True)
  full = json.loads(out.read_text())
  assert full['mfu'] == pytest.approx(full['model_tflops_per_device_per_step'] / full['step_s'])

  from tests.tiny import tiny_config  # pylint: disable=g-import-not-at-top
  from vitclip import run as run_lib  # pylint: disable=g-import-not-at-top
  xla = {}
  for remat in ('none', 'full'):
    config = tiny_config('', **one_block, **{'model.remat_policy': remat})
    run = run_lib.build(config, None, train=False, check_data=False, with_tokenizer=False)
    b, size, length = config.batch_size, config.model.image.image_size, config.model.text.max_len
    batch = {'image': jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8),
             'tokens': jax.ShapeDtypeStruct((b, length), jnp.int32)}
    step = run_lib.compile_train_step(run)
    if remat == 'none':
      model_flops = flops.count_matmul_flops(step, run.abstract_state, batch)
    xla[remat] = step.lower(run.abstract_state, batch).cost_analysis()['flops']
  assert model_flops > 0
  assert full['model_tflops_per_device_per_step'] * 1e12 == pytest.approx(model_flops / jax.device_count())
  assert xla['full'] > xla['none']  # The recomputed forward pass is in the program XLA counts.


def test_cpu_options_benchmark_compares_variants_of_one_step(tmp_path):
  """benchmarks/cpu_options.py: a variant whose option is XLA's default compiles the same program from the same
  state, so after the same steps its loss equals the default's exactly; a refused option stops it before the
  step is built (exit 2, XLA's message)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, 'benchmarks/cpu_options.py', '--config', 'tests/tiny.py',
         '--config.model.image.variant=mu/8', '--config.model.text.variant=mu']
  out = tmp_path / 'options.json'
  subprocess.run([*cmd, '--option', 'xla_cpu_enable_fast_math=false', '--rounds', '2', '--steps', '1',
                  '--warmup', '1', '--json', str(out)], cwd=root, check=True, capture_output=True)
  variants = json.loads(out.read_text())['variants']
  assert list(variants) == ['default', 'xla_cpu_enable_fast_math=false']
  assert variants['xla_cpu_enable_fast_math=false']['options'] == {'xla_cpu_enable_fast_math': False}
  assert variants['default']['final_loss'] == variants['xla_cpu_enable_fast_math=false']['final_loss']
  assert all(len(v['samples_per_s']) == 2 and min(v['samples_per_s']) > 0 for v in variants.values())
  assert variants['default']['median_ratio_to_default'] == 1.0

  refused = subprocess.run([*cmd, '--option', 'xla_cpu_no_such_option=1'], cwd=root, capture_output=True,
                           text=True)
  assert refused.returncode == 2
  assert "--option xla_cpu_no_such_option=1: XLA refused it" in refused.stderr
  assert 'Traceback' not in refused.stderr
