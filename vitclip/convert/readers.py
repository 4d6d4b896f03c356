"""Reading checkpoint files into {key: numpy array}, without executing anything stored in them.

  * `.safetensors`: parsed here (8-byte header size, JSON header, raw little-endian data), so no torch is
    needed and bfloat16 works (via ml_dtypes, which jax ships).
  * torch files (`.pt`, `.pth`, `.bin`, `.ckpt`): `torch.load(weights_only=True)`, which only rebuilds tensors
    and plain containers. A training checkpoint's {'state_dict': ...} is unwrapped and DDP's 'module.' prefix
    dropped.
  * `.npz`: `np.load(allow_pickle=False)`.
"""

import json
import math
import os
import re
import struct
import warnings
import zipfile

import ml_dtypes
import numpy as np

from vitclip.convert.common import ConvertError

TORCH_SUFFIXES = ('.pt', '.pth', '.bin', '.ckpt')
_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_,
}


def read_arrays(path: str) -> dict[str, np.ndarray]:
  """One checkpoint file -> {key: array} (dtype as stored).

  Raises:
    ConvertError: a missing, truncated or damaged file, or one holding anything but numeric arrays.
  """
  if os.path.isdir(path):
    raise ConvertError(f'{path}: a directory; only Hugging Face folders (--format hf or auto) are read as folders.')
  if not os.path.isfile(path):
    raise ConvertError(f'{path}: no such file.')
  if path.endswith('.safetensors'):
    return read_safetensors(path)
  if path.endswith('.npz'):
    return read_npz(path)
  if path.endswith(TORCH_SUFFIXES):
    return read_torch(path)
  raise ConvertError(f'{path}: unknown checkpoint file type; use .safetensors, .npz or a torch file '
                     f'({", ".join(TORCH_SUFFIXES)}).')


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Every array of a safetensors file, checked against the header (a truncated file is named as such)."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    (size,) = struct.unpack('<Q', data[:8])
    header = json.loads(data[8:8 + size]) if 8 + size <= len(data) else None
  except (struct.error, ValueError):
    header = None
  if not isinstance(header, dict):
    raise ConvertError(f'{path}: not a safetensors file, or truncated (the header does not parse).')
  body = memoryview(data)[8 + size:]
  out = {}
  for key, info in header.items():
    if key == '__metadata__':
      continue
    try:
      name, shape = str(info['dtype']), tuple(int(n) for n in info['shape'])
      start, end = (int(n) for n in info['data_offsets'])
    except (KeyError, TypeError, ValueError):
      raise ConvertError(f'{path}: damaged header: key {key!r} has {info!r:.100}.') from None
    if name not in _SAFETENSORS_DTYPES:
      raise ConvertError(f'{path}: key {key!r} has unsupported dtype {name}.')
    dtype = np.dtype(_SAFETENSORS_DTYPES[name]).newbyteorder('<')
    if end > len(body):
      raise ConvertError(f'{path}: truncated: key {key!r} ends at byte {end} of the data, which has '
                         f'{len(body)}; download the file again.')
    if not 0 <= start <= end or end - start != math.prod(shape) * dtype.itemsize:
      raise ConvertError(f'{path}: damaged header: key {key!r} of shape {shape} and dtype {name} spans bytes '
                         f'{start}..{end}.')
    out[key] = np.frombuffer(body[start:end], dtype=dtype).reshape(shape)
  return out


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Every array of an npz; object arrays (pickled Python objects) are refused, never unpickled."""
  try:
    archive = np.load(path, allow_pickle=False)
  except ValueError:  # Neither zip nor .npy: np.load would have to unpickle it.
    raise ConvertError(f'{path}: not an npz archive (a zip of .npy arrays).') from None
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise ConvertError(f'{path}: truncated or damaged npz archive ({_one_line(e)}).') from None
  if not isinstance(archive, np.lib.npyio.NpzFile):  # A single .npy array.
    raise ConvertError(f'{path}: a single .npy array, not an npz archive of named arrays.')
  out = {}
  with archive:
    for key in archive.files:
      try:
        out[key] = archive[key]
      except Exception as e:  # pylint: disable=broad-except  # numpy raises many types for damaged members.
        if 'allow_pickle' in str(e):  # numpy's refusal to unpickle an object array.
          raise ConvertError(f'{path}: key {key!r} is an object array (pickled Python objects); only numeric '
                             'arrays are read, and nothing is unpickled.') from None
        raise ConvertError(f'{path}: damaged npz archive at key {key!r} ({_one_line(e)}).') from None
  return out


def read_torch(path: str) -> dict[str, np.ndarray]:
  """A torch state dict read with `torch.load(weights_only=True)`, which builds tensors and plain containers
  only and runs nothing stored in the file."""
  try:
    import torch  # Optional: requirements-convert.txt.
  except ImportError:
    raise ConvertError(f'{path}: reading torch files needs torch (pip install -r requirements-convert.txt), or '
                       'convert the file to .safetensors first.') from None
  try:
    with warnings.catch_warnings():  # torch warns about TorchScript and pickle protocols; errors are ours.
      warnings.simplefilter('ignore')
      obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # torch raises many types for foreign files.
    raise ConvertError(_torch_load_failure(path, e)) from None
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


def _torch_load_failure(path: str, e: Exception) -> str:
  """torch.load's multi-paragraph refusal -> one line saying what the file is and what to do."""
  text = re.sub(r'\x1b\[[0-9;]*m', '', str(e))  # torch colours parts of its message.
  if 'TorchScript' in text:
    return (f"{path}: a TorchScript archive (OpenAI's original .pt), which torch.load(weights_only=True) does not "
            'read; save torch.jit.load(path).state_dict() with safetensors and convert that.')
  refusal = re.search(r'WeightsUnpickler error:\s*(.*?)(?: was not an allowed global|\. Please|\n\n|$)', text,
                      re.S)
  if refusal:
    return (f'{path}: the pickle holds more than tensors and plain containers ({_one_line(refusal.group(1))}), '
            'so torch.load(weights_only=True) refuses it and nothing in it is run; convert a state dict saved '
            'with safetensors from a copy you trust.')
  return f'{path}: not a torch checkpoint torch.load(weights_only=True) reads ({_one_line(e)}).'


def read_json(path: str) -> dict:
  """A JSON object file (configs, shard indexes of source folders)."""
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ConvertError(f'{path}: unreadable JSON ({_one_line(e)}).') from None
  if not isinstance(data, dict):
    raise ConvertError(f'{path}: expected a JSON object, got {type(data).__name__}.')
  return data


def _one_line(e) -> str:
  return ' '.join(str(e).split())[:200] or type(e).__name__


def read_hf_weights(folder: str) -> dict[str, np.ndarray]:
  """The weights of a Hugging Face model folder: model.safetensors, its sharded index, or pytorch_model.bin."""
  index = os.path.join(folder, 'model.safetensors.index.json')
  if os.path.exists(index):
    weight_map = read_json(index).get('weight_map')
    if not isinstance(weight_map, dict):
      raise ConvertError(f'{index}: no "weight_map" object naming the shard of each key.')
    return {k: v for name in sorted(set(weight_map.values()))
            for k, v in read_arrays(os.path.join(folder, name)).items()}
  for name in ('model.safetensors', 'pytorch_model.bin'):
    if os.path.exists(os.path.join(folder, name)):
      return read_arrays(os.path.join(folder, name))
  raise ConvertError(f'{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin.')
