"""Text tokenizers: a BPE trained on the training captions, or any existing HF `tokenizer.json`.

Every tokenizer turns a list of strings into fixed-length int32 ids `[N, max_len]`: start token, pieces,
end token, padding. Over-long texts are truncated *before* the end token so the end token is always present
(EOS pooling relies on it).
"""

import dataclasses
from typing import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, BOS, EOS, UNK = '[PAD]', '[BOS]', '[EOS]', '[UNK]'


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
    """ids: int [N, L] -> N strings (specials dropped)."""
    texts = self.tok.decode_batch([list(map(int, row)) for row in np.asarray(ids)], skip_special_tokens=True)
    return [t.strip() for t in texts]  # Byte-level BPE encodes a leading space (add_prefix_space).

  def save(self, path: str):
    self.tok.save(path)

  @classmethod
  def from_file(cls, path: str, max_len: int) -> 'Tokenizer':
    """Loads a tokenizer.json; special ids are looked up by the usual names of BPE and CLIP vocabularies."""
    tok = tokenizers.Tokenizer.from_file(path)
    find = lambda *names: next((tok.token_to_id(n) for n in names if tok.token_to_id(n) is not None), None)
    eos = find(EOS, '<|endoftext|>', '</s>', '<eos>')
    if eos is None:
      raise ValueError(f'{path}: no end-of-text token ({EOS!r}, "<|endoftext|>", "</s>" or "<eos>") in the '
                       'vocabulary; vitclip pools text at that token.')
    pad = find(PAD, '<pad>')
    return cls(tok, max_len, eos_id=eos, pad_id=eos if pad is None else pad,
               bos_id=find(BOS, '<|startoftext|>', '<s>', '<bos>'))


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
