"""Reading checkpoint files into {key: numpy array}, without executing anything stored in them.

  * `.safetensors`: parsed here (8-byte header size, JSON header, raw little-endian data), so no torch is
    needed and bfloat16 works (via ml_dtypes, which jax ships).
  * torch files (`.pt`, `.pth`, `.bin`, `.ckpt`): `torch.load(weights_only=True)`, which only rebuilds tensors
    and plain containers. A training checkpoint's {'state_dict': ...} is unwrapped and DDP's 'module.' prefix
    dropped.
  * `.npz`: `np.load(allow_pickle=False)`.
"""

import json
import os
import re
import struct

import ml_dtypes
import numpy as np

from vitclip.convert.common import ConvertError

TORCH_SUFFIXES = ('.pt', '.pth', '.bin', '.ckpt')
_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_,
}


def read_arrays(path: str) -> dict[str, np.ndarray]:
  """One checkpoint file -> {key: array} (dtype as stored)."""
  if os.path.isdir(path):
    raise ConvertError(f'{path}: a directory; only Hugging Face folders (--format hf or auto) are read as folders.')
  if not os.path.isfile(path):
    raise ConvertError(f'{path}: no such file.')
  if path.endswith('.safetensors'):
    return read_safetensors(path)
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  if path.endswith(TORCH_SUFFIXES):
    return read_torch(path)
  raise ConvertError(f'{path}: unknown checkpoint file type; use .safetensors, .npz or a torch file '
                     f'({", ".join(TORCH_SUFFIXES)}).')


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  with open(path, 'rb') as f:
    data = f.read()
  try:
    (size,) = struct.unpack('<Q', data[:8])
    header = json.loads(data[8:8 + size])
  except (struct.error, ValueError):
    raise ConvertError(f'{path}: not a safetensors file (bad header).') from None
  body = memoryview(data)[8 + size:]
  out = {}
  for key, info in header.items():
    if key == '__metadata__':
      continue
    if info['dtype'] not in _SAFETENSORS_DTYPES:
      raise ConvertError(f'{path}: key {key!r} has unsupported dtype {info["dtype"]}.')
    start, end = info['data_offsets']
    dtype = np.dtype(_SAFETENSORS_DTYPES[info['dtype']]).newbyteorder('<')
    out[key] = np.frombuffer(body[start:end], dtype=dtype).reshape(info['shape'])
  return out


def read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # Optional: requirements-convert.txt.
  except ImportError:
    raise ConvertError(f'{path}: reading torch files needs torch (pip install -r requirements-convert.txt), or '
                       'convert the file to .safetensors first.') from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # torch raises many types for foreign files.
    text = re.sub(r'\x1b\[[0-9;]*m', '', str(e)).strip()  # torch colours parts of its message.
    first = text.splitlines()[0].rstrip(' ,.') if text else type(e).__name__
    raise ConvertError(f'{path}: torch.load(weights_only=True) failed ({first}). Only plain state dicts are read; '
                       'a TorchScript archive (OpenAI\'s original .pt) can be turned into one with '
                       'torch.jit.load(path).state_dict() saved via safetensors.') from None
  for wrapper in ('state_dict', 'model'):
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
    raise ConvertError(f'{path}: expected a state dict (a dict of tensors), got {type(obj).__name__} without '
                       'tensors.')
  out = {}
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      continue  # e.g. integers stored next to the weights
    key = key[len('module.'):] if key.startswith('module.') else key
    out[key] = value.detach().to(torch.float32).numpy() if value.is_floating_point() else value.numpy()
  return out


def read_hf_weights(folder: str) -> dict[str, np.ndarray]:
  """The weights of a Hugging Face model folder: model.safetensors, its sharded index, or pytorch_model.bin."""
  index = os.path.join(folder, 'model.safetensors.index.json')
  if os.path.exists(index):
    with open(index, encoding='utf-8') as f:
      files = sorted(set(json.load(f)['weight_map'].values()))
    return {k: v for name in files for k, v in read_safetensors(os.path.join(folder, name)).items()}
  for name in ('model.safetensors', 'pytorch_model.bin'):
    if os.path.exists(os.path.join(folder, name)):
      return read_arrays(os.path.join(folder, name))
  raise ConvertError(f'{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin.')
