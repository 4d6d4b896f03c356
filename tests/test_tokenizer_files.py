"""CLIP tokenizer files as they exist in the wild, written here byte for byte from their documented layouts
(nothing downloads): OpenAI's `bpe_simple_vocab_16e6.txt[.gz]` with its real first line, HF's
`vocab.json` + `merges.txt` and `tokenizer.json`. Every form must give the ids of OpenAI's own tokenizer
(restated below from clip/simple_tokenizer.py and clip.tokenize) and of transformers' CLIPTokenizer; a missing
or damaged file is one TokenizerFileError line naming it.
"""

import functools
import gzip
import html
import json
import re
import unicodedata

import numpy as np
import pytest
import regex

from vitclip import tokenizer as tokenizer_lib
from vitclip.tokenizer import Tokenizer, TokenizerFileError, load_clip_bpe

# The first line of OpenAI's bpe_simple_vocab_16e6.txt, quote and file name included (OpenAI's reader skips it).
OPENAI_HEADER = '"bpe_simple_vocab_16e6.txt#version: 0.2'
HF_HEADER = '#version: 0.2'  # The first line of HF's merges.txt.
# Merges in the style of the head of OpenAI's file: each part is a byte character, one with '</w>', or an
# earlier merge. Non-ASCII text appears as its UTF-8 bytes mapped to characters: 'ð Ł' joins the first two bytes
# of most emoji, 'Ã ©</w>' the two of a word-final 'é'.
MERGES = [tuple(m.split()) for m in (
    'i n', 't h', 'a n', 'r e', 'a r', 'e r', 'th e</w>', 'in g</w>', 'o u', 'o n', 's t', 'o r', 'e n',
    'o n</w>', 'a l', 'a t', 'e r</w>', 'i t', 'i n</w>', 't o</w>', 'r o', 'i s</w>', 'l e', 'i c', 'a t</w>',
    'an d</w>', 'e d</w>', 'o f</w>', 'c h', 'o r</w>', 'e s', 'i l', 'e l', 's t</w>', 'a c', 'o m', 'a m',
    'l o', 'a n</w>', 'a y', 's h', 'r i', 'l i', 't i', 'f or</w>', 'n e', 'ð Ł', 'a d', 'e l</w>', 'c at</w>',
    'h at</w>', 't ri', 'tri an', 'trian g', 'l e</w>', 'triang le</w>', 're d</w>', 'g re', 'e n</w>',
    'gre en</w>', 'c a', 'ca f', 'Ã ©</w>', 'caf Ã©</w>')]
EXTRA_MERGES = [('s', 'q'), ('sq', 'u')]  # In the file beyond the merges a model's vocabulary uses.
VOCAB_SIZE = 2 * 256 + len(MERGES) + 2
MAX_LEN = 12
# Texts OpenAI's ftfy.fix_text leaves as they are (it would also straighten curly quotes, which HF does not):
# case, whitespace runs, contractions, punctuation runs, digits, combining accents, an emoji, the end token
# typed in, empty text and text longer than MAX_LEN.
TEXTS = ['the cat in the hat', 'A  RED\ttriangle\n and a Green one!!', "it's won't I'LL", 'café cafe\u0301',
         'numbers 12,345.6 $%^*()', 'emoji 🙂 ok', '<|endoftext|> hi', '', '   ',
         'the quick brown fox jumps over the lazy dog and the cat', 'x' * 40]


def merges_text(header: str, merges=MERGES) -> str:
  return header + '\n' + ''.join(f'{a} {b}\n' for a, b in merges)


def write_openai_bpe(path: str, merges=MERGES):
  """OpenAI's bpe_simple_vocab_16e6.txt.gz layout: gzip of the header line, one merge a line, a final newline."""
  with gzip.open(path, 'wb') as f:
    f.write(merges_text(OPENAI_HEADER, merges).encode('utf-8'))


@functools.cache
def _openai_bytes_to_unicode() -> dict[int, str]:
  """clip/simple_tokenizer.py's bytes_to_unicode, as OpenAI wrote it."""
  bs = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
        + list(range(ord('®'), ord('ÿ') + 1)))
  cs = bs[:]
  n = 0
  for b in range(2**8):
    if b not in bs:
      bs.append(b)
      cs.append(2**8 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


class OpenAITokenizer:
  """OpenAI's CLIP tokenizer: clip/simple_tokenizer.py's SimpleTokenizer and clip.tokenize(truncate=True).

  One step is left out: ftfy.fix_text, which is not installed here; its NFC normalisation is kept, and TEXTS
  hold nothing else it would change.
  """
  PATTERN = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                          r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)

  def __init__(self, path: str, num_merges: int = tokenizer_lib.OPENAI_MERGES):
    merges = gzip.open(path).read().decode('utf-8').split('\n')
    merges = [tuple(m.split()) for m in merges[1:num_merges + 1]]  # OpenAI: merges[1:49152-256-2+1].
    vocab = list(_openai_bytes_to_unicode().values())
    vocab = vocab + [v + '</w>' for v in vocab] + [''.join(m) for m in merges]
    vocab.extend(['<|startoftext|>', '<|endoftext|>'])
    self.encoder = dict(zip(vocab, range(len(vocab))))
    self.ranks = dict(zip(merges, range(len(merges))))
    self.cache = {'<|startoftext|>': '<|startoftext|>', '<|endoftext|>': '<|endoftext|>'}

  def bpe(self, token: str) -> str:
    if token in self.cache:
      return self.cache[token]
    word = tuple(token[:-1]) + (token[-1] + '</w>',)
    while len(word) > 1:
      pairs = set(zip(word, word[1:]))
      bigram = min(pairs, key=lambda pair: self.ranks.get(pair, float('inf')))
      if bigram not in self.ranks:
        break
      merged, i = [], 0
      while i < len(word):
        if i < len(word) - 1 and (word[i], word[i + 1]) == bigram:
          merged.append(word[i] + word[i + 1])
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = tuple(merged)
    return ' '.join(word)

  def encode(self, text: str) -> list[int]:
    text = unicodedata.normalize('NFC', html.unescape(html.unescape(text)).strip())  # basic_clean
    text = regex.sub(r'\s+', ' ', text).strip().lower()  # whitespace_clean, lower
    ids = []
    for token in regex.findall(self.PATTERN, text):
      token = ''.join(_openai_bytes_to_unicode()[b] for b in token.encode('utf-8'))
      ids.extend(self.encoder[t] for t in self.bpe(token).split(' '))
    return ids

  def tokenize(self, texts, context_length: int) -> np.ndarray:
    """clip.tokenize(texts, context_length, truncate=True): SOT, ids, EOT, zeros; cut text keeps EOT last."""
    sot, eot = self.encoder['<|startoftext|>'], self.encoder['<|endoftext|>']
    out = np.zeros((len(texts), context_length), np.int64)
    for i, text in enumerate(texts):
      tokens = [sot] + self.encode(text) + [eot]
      if len(tokens) > context_length:
        tokens = tokens[:context_length]
        tokens[-1] = eot
      out[i, :len(tokens)] = tokens
    return out


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """The CLIP tokenizer files of one vocabulary, in each layout; OpenAI's file also holds EXTRA_MERGES."""
  root = tmp_path_factory.mktemp('clip_tokenizer_files')
  write_openai_bpe(str(root / 'bpe_simple_vocab_16e6.txt.gz'), MERGES + EXTRA_MERGES)
  (root / 'bpe_simple_vocab_16e6.txt').write_bytes(merges_text(OPENAI_HEADER, MERGES + EXTRA_MERGES).encode())
  pair = root / 'hf_pair'
  pair.mkdir()
  vocab = OpenAITokenizer(str(root / 'bpe_simple_vocab_16e6.txt.gz'), len(MERGES)).encoder
  (pair / 'vocab.json').write_text(json.dumps(vocab, ensure_ascii=False), encoding='utf-8')
  (pair / 'merges.txt').write_text(merges_text(HF_HEADER), encoding='utf-8')
  return root


def _encode(tok) -> np.ndarray:
  """TEXTS -> ids [N, MAX_LEN] through vitclip's fixed-length encoder."""
  return Tokenizer.from_tokenizer(tok, MAX_LEN).encode(TEXTS)


def _openai_ids(files) -> np.ndarray:
  return OpenAITokenizer(str(files / 'bpe_simple_vocab_16e6.txt.gz'), len(MERGES)).tokenize(TEXTS, MAX_LEN)


@pytest.mark.parametrize('name', ['bpe_simple_vocab_16e6.txt.gz', 'bpe_simple_vocab_16e6.txt'])
def test_openai_merges_file_gives_openai_ids(files, name):
  """The real header is not a merge, the model's vocabulary size picks the merges, and OpenAI pads with 0."""
  tok = load_clip_bpe(str(files / name), vocab_size=VOCAB_SIZE, pad_id=0)
  assert tok.get_vocab_size() == VOCAB_SIZE
  np.testing.assert_array_equal(_encode(tok), _openai_ids(files))


def test_hf_files_give_transformers_ids(files, tmp_path):
  """vocab.json + merges.txt (the folder or either file) and tokenizer.json (the file or its folder) give
  CLIPTokenizer's ids on the same files, which are OpenAI's but for padding with the end token."""
  transformers = pytest.importorskip('transformers')
  hf = transformers.CLIPTokenizer.from_pretrained(str(files / 'hf_pair'))
  expected = np.asarray(hf(TEXTS, padding='max_length', truncation=True, max_length=MAX_LEN)['input_ids'])
  openai = _openai_ids(files)
  for row in openai:  # HF pads with the end token: everything after the last one (a typed-in one precedes it).
    row[np.flatnonzero(row == VOCAB_SIZE - 1)[-1] + 1:] = VOCAB_SIZE - 1
  np.testing.assert_array_equal(openai, expected)
  hf.save_pretrained(str(tmp_path))  # tokenizer.json as transformers writes it.
  for path in (files / 'hf_pair', files / 'hf_pair' / 'vocab.json', files / 'hf_pair' / 'merges.txt', tmp_path,
               tmp_path / 'tokenizer.json'):
    np.testing.assert_array_equal(_encode(load_clip_bpe(str(path))), expected, err_msg=str(path))


def test_merges_file_too_short_for_the_model(files):
  have, need = len(MERGES + EXTRA_MERGES), len(MERGES) + 4
  with pytest.raises(TokenizerFileError, match=f"{have} merges, but the model's {VOCAB_SIZE + 4} tokens need {need}"):
    load_clip_bpe(str(files / 'bpe_simple_vocab_16e6.txt.gz'), vocab_size=VOCAB_SIZE + 4)


def _gz(data: bytes) -> bytes:
  return gzip.compress(data)


# name -> (file bytes or None for no file, the message after the path).
BROKEN = {
    'missing.txt.gz': (None, 'no such file or directory'),
    'truncated.txt.gz': (_gz(merges_text(OPENAI_HEADER).encode())[:40], 'unreadable or damaged'),
    'not_gzip.txt.gz': (b'\x1f\x8b' + b'\x00' * 30, 'unreadable or damaged'),
    'binary.txt': (bytes(range(256)), 'not UTF-8 text'),
    'bad_line.txt': (f'{OPENAI_HEADER}\ni n\nt h e\n'.encode(), "line 3 is 't h e', not a merge"),
    'unknown_part.txt': (f'{OPENAI_HEADER}\ni n\nxy z\n'.encode(), 'the merges do not fit the vocabulary'),
    'tokenizer.json': (b'{"model": ', 'not a tokenizers JSON file'),
    'vocab.json': (b'{}', 'a vocabulary without merges.txt beside it'),
    'spiece.model': (b'\n\x05hello', "a SentencePiece model, but CLIP models use CLIP's BPE"),
}


@pytest.mark.parametrize('name', sorted(BROKEN))
def test_broken_clip_files_name_the_file(tmp_path, name):
  data, message = BROKEN[name]
  path = tmp_path / name
  if data is not None:
    path.write_bytes(data)
  with pytest.raises(TokenizerFileError) as e:
    load_clip_bpe(str(path))
  assert str(e.value).startswith(f'{path}: ') and message in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('data,message', [(None, 'No such file'), (b'', 'an empty file'),
                                          (b'\x0a\x05hello\xff\xff', 'not a SentencePiece model')])
def test_broken_sentencepiece_model_names_the_file(tmp_path, data, message):
  path = tmp_path / 'spiece.model'
  if data is not None:
    path.write_bytes(data)
  with pytest.raises(TokenizerFileError) as e:
    tokenizer_lib.SentencePieceTokenizer.from_file(str(path), MAX_LEN)
  assert str(e.value).startswith(f'{path}: ') and message in str(e.value)


def test_broken_tokenizer_json_of_a_model_directory_names_the_file(tmp_path):
  path = tmp_path / 'tokenizer.json'
  path.write_text('{"version": "1.0", "model": {"type": "BPE"')
  with pytest.raises(TokenizerFileError, match=f'^{re.escape(str(path))}: not a tokenizers JSON file'):
    Tokenizer.from_file(str(path), MAX_LEN)
