"""Pretrained CLIP / SigLIP weights -> a vitclip model directory that `eval.py` and `config.init_from` read.

  python -m vitclip.convert SRC --out DIR [--format auto|hf|openai|open_clip|big_vision] [--variant V]
                                [--tokenizer PATH]

SRC: a Hugging Face folder (CLIPModel / SiglipModel), an OpenAI / open_clip state dict (.safetensors or a torch
file read with weights_only=True), or a big_vision SigLIP .npz. DIR receives:
  config.json          the config fields the source determines: the model architecture, tokenizer, loss.kind,
                       data.mean/std (`vitclip.config.load_model_dir` lays it over a full config, e.g.
                       configs/base.py's, for the run settings);
  tokenizer.json       CLIP BPE, or tokenizer.model (SigLIP SentencePiece); config.tokenizer.path names it;
  checkpoints/0/state  {'params': params} (orbax; `vitclip.checkpoint.save_params`), float32.

torch / transformers are needed only for torch files and HF folders (requirements-convert.txt).
"""

import os

from vitclip import tokenizer as tokenizer_lib
from vitclip.convert import common
from vitclip.convert.common import ConvertError

FORMATS = ('auto', 'hf', 'openai', 'open_clip', 'big_vision')

__all__ = ['ConvertError', 'FORMATS', 'convert', 'detect_format']


def detect_format(src: str) -> str:
  """'hf' for a folder with config.json, 'big_vision' for an npz of big_vision names, 'openai' for a state dict
  with OpenAI's names (QuickGELU; open_clip's GELU models need format='open_clip')."""
  from vitclip.convert import big_vision, hf, openai, readers
  if hf.is_hf_folder(src):
    return 'hf'
  if os.path.isdir(src):
    raise ConvertError(f'{src}: a folder without config.json; pass a Hugging Face model folder or a file.')
  arrays = readers.read_arrays(src)
  if big_vision.looks_like(arrays):
    return 'big_vision'
  if openai.looks_like(arrays):
    return 'openai'
  first = next(iter(arrays), None)
  raise ConvertError(f'{src}: cannot tell the format (first key {first!r}); pass --format '
                     f'({", ".join(FORMATS[1:])}).')


def convert(src: str, out: str, format: str = 'auto', variant: str | None = None,  # pylint: disable=redefined-builtin
            tokenizer: str | None = None):
  """Converts `src` into the model directory `out` and returns its vitclip config (ml_collections.ConfigDict).

  Args:
    src: HF folder, state dict file or big_vision .npz.
    out: output directory (created; must not already hold a checkpoint).
    format: one of FORMATS.
    variant: 'IMAGE[,TEXT]' vitclip variants, e.g. 'B/16' or 'B/16,M'; checked against the weights (inferred
      when None). TEXT defaults to IMAGE's size.
    tokenizer: tokenizer file; needed for state dicts and .npz, which carry none (HF folders bring theirs).

  Returns:
    The config written to `out/config.json`: the fields the source determines (model, tokenizer, loss.kind,
    data.mean/std); lay it over a full config for the rest (`vitclip.config.load_model_dir`).

  Raises:
    ConvertError: unreadable or mismatched source or tokenizer file, with a one-line message naming the file
      (for weights: the first bad key and the expected shape).
  """
  from vitclip.convert import big_vision, hf, openai
  if format not in FORMATS:
    raise ConvertError(f'format={format!r} is unknown; use one of {FORMATS}.')
  src = os.path.expanduser(src)
  if not os.path.exists(src):
    raise ConvertError(f'{src}: no such file or directory.')
  tokenizer = tokenizer and os.path.expanduser(tokenizer)
  if tokenizer and not os.path.exists(tokenizer):
    raise ConvertError(f'{tokenizer}: no such tokenizer file or directory.')
  fmt = detect_format(src) if format == 'auto' else format
  try:
    if fmt == 'hf':
      config, params, tok = hf.convert(src, variant, tokenizer)
    elif fmt == 'big_vision':
      config, params, tok = big_vision.convert(src, variant, tokenizer)
    else:
      config, params, tok = openai.convert(src, fmt, variant, tokenizer)
  except ConvertError:
    raise
  except tokenizer_lib.TokenizerFileError as e:  # Names the tokenizer file.
    raise ConvertError(str(e)) from None
  except ValueError as e:  # Model construction refusing the inferred settings.
    raise ConvertError(f'{src}: {e}') from None
  common.write(out, config, params, tok.save)
  return config
