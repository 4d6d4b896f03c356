"""Text tokenizers: a BPE trained on the training captions, any existing HF `tokenizer.json` (CLIP's included),
or a SentencePiece `.model` (SigLIP).

Every tokenizer turns a list of strings into fixed-length int32 ids `[N, max_len]`: start token (if any), pieces,
end token, padding. Over-long texts are truncated *before* the end token so the end token is always present
(EOS pooling relies on it).

Reproducing pretrained models' tokenizers (ids identical to the HF tokenizers of the same files):
  * CLIP: `clip_bpe` builds the byte-level BPE of CLIP (NFC, whitespace runs -> ' ', lowercase; CLIP's
    pre-tokenizer regex; '</w>' word ends), from vocab + merges or from OpenAI's merges file alone;
    `load_clip_bpe` reads each file form in use (HF tokenizer.json, vocab.json + merges.txt, OpenAI's
    bpe_simple_vocab_16e6.txt[.gz]). The pad id is stored in the tokenizer.json's `padding` field when it is not
    the end token (OpenAI pads with 0).
  * SigLIP: `SentencePieceTokenizer` lowercases, drops ASCII punctuation and collapses whitespace (HF
    SiglipTokenizer's canonicalisation, from big_vision's prompt engineering), appends EOS, no BOS, pads with
    the EOS id.
"""

import dataclasses
import functools
import gzip
import json
import os
import re
import string
import zlib
from typing import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, BOS, EOS, UNK = '[PAD]', '[BOS]', '[EOS]', '[UNK]'
CLIP_BOS, CLIP_EOS = '<|startoftext|>', '<|endoftext|>'
# CLIP's word splitting (OpenAI simple_tokenizer; HF CLIPTokenizer): specials, English contractions, letter runs,
# single digits, runs of other non-space characters.
CLIP_SPLIT = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
              r"""[^\s\p{L}\p{N}]+""")
# OpenAI's vocabulary: 256 byte tokens, the same with '</w>', one token per merge, 2 specials.
CLIP_NON_MERGES = 2 * 256 + 2
# OpenAI's simple_tokenizer reads `merges[1:49152-256-2+1]` of its file: 48 894 merges, 49 408 tokens.
OPENAI_MERGES = 49152 - 256 - 2
# The files `load_clip_bpe` reads, for messages.
CLIP_FILES = 'tokenizer.json, vocab.json + merges.txt, or bpe_simple_vocab_16e6.txt.gz'


class TokenizerFileError(ValueError):
  """A tokenizer file that is missing, unreadable or not of the kind expected; the message names the file."""


@dataclasses.dataclass
class Tokenizer:
  """Fixed-length encoder around a `tokenizers.Tokenizer` (pieces only; specials are added here).

  Attributes:
    tok: the HF tokenizer; its own post-processor/padding/truncation are disabled and handled here.
    max_len: output length L, including the start and end tokens.
    bos_id / eos_id / pad_id: special ids; bos_id may be None (SigLIP-style tokenizers have no start token).
  """
  tok: tokenizers.Tokenizer
  max_len: int
  eos_id: int
  pad_id: int
  bos_id: int | None = None

  def __post_init__(self):
    self.tok.no_padding()
    self.tok.no_truncation()

  @property
  def vocab_size(self) -> int:
    return self.tok.get_vocab_size(with_added_tokens=True)

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """texts: N strings -> int32 [N, max_len]."""
    prefix = [] if self.bos_id is None else [self.bos_id]
    room = self.max_len - len(prefix) - 1
    out = np.full((len(texts), self.max_len), self.pad_id, np.int32)
    for i, enc in enumerate(self.tok.encode_batch(list(texts), add_special_tokens=False)):
      ids = prefix + enc.ids[:room] + [self.eos_id]
      out[i, :len(ids)] = ids
    return out

  def decode(self, ids: np.ndarray) -> list[str]:
    """ids: int [N, L] -> N strings (specials dropped; padding after the last end token too, which matters when
    the pad id is an ordinary token: OpenAI pads with 0 = '!')."""
    rows = [list(map(int, row)) for row in np.asarray(ids)]
    rows = [row[:len(row) - row[::-1].index(self.eos_id)] if self.eos_id in row else row for row in rows]
    texts = self.tok.decode_batch(rows, skip_special_tokens=True)
    return [t.strip() for t in texts]  # Byte-level BPE encodes a leading space (add_prefix_space).

  def save(self, path: str):
    """Writes a tokenizer.json; a pad id other than the end token is kept in its `padding` field."""
    if self.pad_id != self.eos_id:
      self.tok.enable_padding(pad_id=self.pad_id, pad_token=self.tok.id_to_token(self.pad_id))
    self.tok.save(path)
    self.tok.no_padding()

  @classmethod
  def from_file(cls, path: str, max_len: int) -> 'Tokenizer | SentencePieceTokenizer':
    """Loads a tokenizer.json, or a SentencePiece model for a path ending in '.model'."""
    if path.endswith(SentencePieceTokenizer.SUFFIX):
      return SentencePieceTokenizer.from_file(path, max_len)
    return cls.from_tokenizer(_tokenizer_json(path), max_len, name=path)

  @classmethod
  def from_tokenizer(cls, tok: tokenizers.Tokenizer, max_len: int, name: str = 'tokenizer') -> 'Tokenizer':
    """Wraps `tok`. Special ids are looked up by the usual names of BPE and CLIP vocabularies; the pad id is the
    `padding` field's when `tok` sets one, else '[PAD]' / '<pad>', else the end token (HF CLIP)."""
    find = lambda *names: next((tok.token_to_id(n) for n in names if tok.token_to_id(n) is not None), None)
    eos = find(EOS, CLIP_EOS, '</s>', '<eos>')
    if eos is None:
      raise TokenizerFileError(f'{name}: no end-of-text token ({EOS!r}, "<|endoftext|>", "</s>" or "<eos>") in '
                               'the vocabulary; vitclip pools text at that token.')
    pad = tok.padding['pad_id'] if tok.padding else find(PAD, '<pad>')
    return cls(tok, max_len, eos_id=eos, pad_id=eos if pad is None else pad,
               bos_id=find(BOS, CLIP_BOS, '<s>', '<bos>'))


@dataclasses.dataclass
class SentencePieceTokenizer:
  """Fixed-length encoder around a SentencePiece model, canonicalising text like HF's SiglipTokenizer.

  Attributes:
    model: the serialized SentencePiece model (the bytes of a `.model` file).
    max_len: output length L, including the end token.
    lowercase / strip_punctuation: the canonicalisation (both on for SigLIP).
    eos_id / pad_id: default to the model's '</s>' id for both (SigLIP pads with EOS).
  """
  SUFFIX = '.model'

  model: bytes
  max_len: int
  lowercase: bool = True
  strip_punctuation: bool = True
  eos_id: int | None = None
  pad_id: int | None = None
  bos_id: None = None  # SigLIP has no start token.

  def __post_init__(self):
    import sentencepiece  # Only needed for this tokenizer kind.
    try:
      self.sp = sentencepiece.SentencePieceProcessor(model_proto=self.model)
    except RuntimeError:
      raise ValueError('not a SentencePiece model (a .model file).') from None
    eos = self.sp.piece_to_id('</s>')
    if self.eos_id is None:
      if self.sp.id_to_piece(eos) != '</s>':
        raise ValueError('The SentencePiece model has no "</s>" piece; pass eos_id explicitly.')
      self.eos_id = eos
    self.pad_id = self.eos_id if self.pad_id is None else self.pad_id

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  def canonicalize(self, text: str) -> str:
    """Lowercase, drop ASCII punctuation, whitespace runs -> ' ', strip (HF SiglipTokenizer.canonicalize_text)."""
    if self.lowercase:
      text = text.lower()
    if self.strip_punctuation:
      text = text.translate(_ASCII_PUNCTUATION)
    return re.sub(r'\s+', ' ', text).strip()

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """texts: N strings -> int32 [N, max_len]: pieces (truncated to max_len - 1), EOS, pad."""
    out = np.full((len(texts), self.max_len), self.pad_id, np.int32)
    for i, ids in enumerate(self.sp.encode([self.canonicalize(t) for t in texts])):
      ids = ids[:self.max_len - 1] + [self.eos_id]
      out[i, :len(ids)] = ids
    return out

  def decode(self, ids: np.ndarray) -> list[str]:
    """ids: int [N, L] -> N strings (end and pad tokens dropped)."""
    drop = {self.eos_id, self.pad_id}
    return [self.sp.decode([int(i) for i in row if int(i) not in drop]) for row in np.asarray(ids)]

  def save(self, path: str):
    with open(path, 'wb') as f:
      f.write(self.model)

  @classmethod
  def from_file(cls, path: str, max_len: int, **kwargs) -> 'SentencePieceTokenizer':
    """Raises TokenizerFileError for a missing, unreadable or empty file or one that is not a model."""
    try:
      with open(path, 'rb') as f:
        model = f.read()
    except OSError as e:
      raise TokenizerFileError(f'{path}: {e.strerror or _one_line(e)}; expected a SentencePiece model.') from None
    if not model:  # sentencepiece accepts empty bytes as a model without pieces.
      raise TokenizerFileError(f'{path}: an empty file; expected a SentencePiece model.')
    try:
      return cls(model, max_len, **kwargs)
    except ValueError as e:
      raise TokenizerFileError(f'{path}: {e}') from None


_ASCII_PUNCTUATION = str.maketrans('', '', string.punctuation)


# ------------------------------------------------------------------------------------------- CLIP's BPE


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
  """GPT-2 / CLIP byte -> printable character map, in CLIP's vocabulary order (printable bytes map to
  themselves; the other 68 bytes to chr(256 + k))."""
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
  others = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable}, **{b: chr(256 + k) for k, b in enumerate(others)}}


def clip_vocab_from_merges(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
  """OpenAI's vocabulary rule: 256 byte characters, the same with '</w>', one token per merge, then
  '<|startoftext|>' and '<|endoftext|>' (so EOT is the largest id). Returns token -> id."""
  chars = list(bytes_to_unicode().values())
  tokens = chars + [c + '</w>' for c in chars] + [a + b for a, b in merges] + [CLIP_BOS, CLIP_EOS]
  return {t: i for i, t in enumerate(tokens)}


def read_merges(path: str, limit: int | None = None) -> list[tuple[str, str]]:
  """Reads a BPE merges file: a header line, then one 'a b' pair a line. Returns the first `limit` pairs.

  The files in use: OpenAI's bpe_simple_vocab_16e6.txt (shipped gzipped by OpenAI and open_clip; header
  '"bpe_simple_vocab_16e6.txt#version: 0.2', quote and file name included) and HF's merges.txt (header
  '#version: 0.2'). OpenAI's reader drops the first line whatever it holds; here a first line without
  '#version' is a merge like any other, so a file without a header loses none.

  Raises:
    TokenizerFileError: missing, damaged or not a merges file; a line that is not a pair (named by number).
  """
  lines = _read_text(path, 'a BPE merges file').split('\n')
  first = 1 if lines and '#version' in lines[0] else 0
  while len(lines) > first and not lines[-1].strip():
    lines.pop()  # The final newline.
  pairs = []
  for number, line in enumerate(lines[first:], start=first + 1):
    if limit is not None and len(pairs) == limit:
      break
    pair = tuple(line.split())
    if len(pair) != 2:
      raise TokenizerFileError(f'{path}: line {number} is {line[:60]!r}, not a merge "a b"; expected a BPE merges '
                               'file (bpe_simple_vocab_16e6.txt[.gz] or merges.txt).')
    pairs.append(pair)
  return pairs


def _read_text(path: str, what: str) -> str:
  """A UTF-8 text file, gunzipped when it starts with gzip's magic bytes (OpenAI's merges are .txt.gz)."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
    if data[:2] == b'\x1f\x8b':
      data = gzip.decompress(data)
    return data.decode('utf-8')
  except FileNotFoundError:
    raise TokenizerFileError(f'{path}: no such file; expected {what}.') from None
  except (OSError, EOFError, zlib.error) as e:  # Not a file; truncated or damaged gzip data.
    raise TokenizerFileError(f'{path}: unreadable or damaged ({_one_line(e)}); expected {what}.') from None
  except UnicodeDecodeError:
    raise TokenizerFileError(f'{path}: not UTF-8 text; expected {what}.') from None


def clip_bpe(vocab: dict[str, int], merges: Sequence[tuple[str, str]], pad_id: int | None = None
             ) -> tokenizers.Tokenizer:
  """CLIP's byte-level BPE (same ids as HF CLIPTokenizer built from this vocab and these merges).

  pad_id: stored as the tokenizer's padding (read back by `Tokenizer.from_file`); None pads with EOS like HF.

  Raises:
    ValueError: the vocabulary lacks CLIP's specials, or a merge uses or makes a token outside it.
  """
  for special in (CLIP_BOS, CLIP_EOS):
    if special not in vocab:
      raise ValueError(f'A CLIP vocabulary needs the {special!r} token.')
  try:
    model = models.BPE(vocab=dict(vocab), merges=list(merges), continuing_subword_prefix='',
                       end_of_word_suffix='</w>', fuse_unk=False, unk_token=CLIP_EOS)
  except Exception as e:  # pylint: disable=broad-except  # tokenizers raises a bare Exception.
    raise ValueError(f'the merges do not fit the vocabulary ({_one_line(e)}).') from None
  tok = tokenizers.Tokenizer(model)
  tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r'\s+'), ' '),
                                         normalizers.Lowercase()])
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior='removed', invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace('</w>', ' ')])
  tok.add_special_tokens([CLIP_BOS, CLIP_EOS])
  return _with_padding(tok, pad_id)


def load_clip_bpe(path: str, vocab_size: int | None = None, pad_id: int | None = None) -> tokenizers.Tokenizer:
  """A CLIP BPE from the files CLIP tokenizers come in:

    * HF `tokenizer.json` (used as is), or a folder holding one;
    * HF `vocab.json` + `merges.txt`: a folder holding both, or either file of the pair;
    * a merges file alone: OpenAI's `bpe_simple_vocab_16e6.txt[.gz]` (or a `merges.txt` without its
      vocab.json). The vocabulary follows OpenAI's rule with the file's first `vocab_size` - 514 merges
      (default `OPENAI_MERGES`: OpenAI's file holds more merges than its models use).

  Args:
    path: file or folder.
    vocab_size: rows of the model's text embedding; a merges file must have enough merges for them.
    pad_id: stored as the tokenizer's padding (OpenAI pads with 0); None pads with the end token.

  Raises:
    TokenizerFileError: missing, unreadable or inconsistent files (the message names the path).
  """
  if not os.path.exists(path):
    raise TokenizerFileError(f'{path}: no such file or directory; expected a CLIP tokenizer ({CLIP_FILES}).')
  folder, name = (path, None) if os.path.isdir(path) else os.path.split(path)
  pair = [os.path.join(folder, n) for n in ('vocab.json', 'merges.txt')]
  if name is None and os.path.isfile(os.path.join(folder, 'tokenizer.json')):
    path, name = os.path.join(folder, 'tokenizer.json'), 'tokenizer.json'
  elif name in (None, 'vocab.json', 'merges.txt') and all(map(os.path.isfile, pair)):
    return _clip_bpe_from_pair(*pair, pad_id)
  elif name is None:
    raise TokenizerFileError(f'{path}: a folder without tokenizer.json or vocab.json + merges.txt; expected a '
                             f'CLIP tokenizer ({CLIP_FILES}).')
  elif name == 'vocab.json':
    raise TokenizerFileError(f'{path}: a vocabulary without merges.txt beside it; expected a CLIP tokenizer '
                             f'({CLIP_FILES}).')
  if name.endswith(SentencePieceTokenizer.SUFFIX):
    raise TokenizerFileError(f"{path}: a SentencePiece model, but CLIP models use CLIP's BPE ({CLIP_FILES}).")
  if name.endswith('.json'):
    return _with_padding(_tokenizer_json(path), pad_id)
  wanted = OPENAI_MERGES if vocab_size is None else vocab_size - CLIP_NON_MERGES
  merges = read_merges(path, wanted)
  if vocab_size is not None and len(merges) < wanted:  # EOT would not be the model's largest id.
    raise TokenizerFileError(
        f'{path}: {len(merges)} merges, but the model\'s {vocab_size} tokens need {wanted} (OpenAI\'s rule: 512 '
        'byte tokens, one per merge, 2 specials); pass the tokenizer this model was trained with.')
  return _clip_bpe_checked(path, clip_vocab_from_merges(merges), merges, pad_id)


def _clip_bpe_from_pair(vocab_path: str, merges_path: str, pad_id: int | None) -> tokenizers.Tokenizer:
  try:
    with open(vocab_path, encoding='utf-8') as f:
      vocab = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise TokenizerFileError(f'{vocab_path}: not a JSON vocabulary ({_one_line(e)}).') from None
  if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
    raise TokenizerFileError(f'{vocab_path}: expected a JSON object token -> id.')
  return _clip_bpe_checked(f'{vocab_path} + merges.txt', vocab, read_merges(merges_path), pad_id)


def _clip_bpe_checked(name: str, vocab, merges, pad_id) -> tokenizers.Tokenizer:
  try:
    return clip_bpe(vocab, merges, pad_id)
  except ValueError as e:
    raise TokenizerFileError(f'{name}: {e}') from None


def _tokenizer_json(path: str) -> tokenizers.Tokenizer:
  try:
    return tokenizers.Tokenizer.from_file(path)
  except Exception as e:  # pylint: disable=broad-except  # tokenizers raises a bare Exception.
    raise TokenizerFileError(f'{path}: not a tokenizers JSON file ({_one_line(e)}).') from None


def _with_padding(tok: tokenizers.Tokenizer, pad_id: int | None) -> tokenizers.Tokenizer:
  if pad_id is not None:
    tok.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id))
  return tok


def _one_line(e: Exception) -> str:
  """An exception's message on one line (library messages span several; CLI errors are one line)."""
  return ' '.join(str(e).split()) or type(e).__name__


def train_bpe(texts: Iterable[str], vocab_size: int, lowercase: bool = True) -> tokenizers.Tokenizer:
  """Trains a byte-level BPE (no unknown tokens for any unicode input) on `texts`."""
  tok = tokenizers.Tokenizer(models.BPE())
  norms = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else []) + [normalizers.Strip()]
  tok.normalizer = normalizers.Sequence(norms)
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS, UNK],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  tok.post_processor = processors.ByteLevel(trim_offsets=True)
  return tok
