"""Tokenizer round trip and special tokens; optimizer schedule, weight-decay mask and freezing."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import base
from vitclip import optim
from vitclip.tokenizer import Tokenizer, train_bpe

CAPTIONS = ['a small red triangle left of a blue circle', 'a large green square above a yellow star',
            'two objects: a purple cross and an orange diamond', 'a photo of a white heart'] * 50


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tok') / 'tokenizer.json')
  train_bpe(CAPTIONS, vocab_size=600).save(path)
  return Tokenizer.from_file(path, max_len=16)


def test_round_trip_and_specials(tokenizer):
  texts = ['a small red triangle left of a blue circle', 'A Large GREEN square']
  ids = tokenizer.encode(texts)
  assert ids.shape == (2, 16) and ids.dtype == np.int32
  assert tokenizer.decode(ids) == [texts[0], 'a large green square']  # lowercased by the normalizer
  for row in ids:
    assert row[0] == tokenizer.bos_id
    eos = np.flatnonzero(row == tokenizer.eos_id)
    assert len(eos) == 1 and np.all(row[eos[0] + 1:] == tokenizer.pad_id)


def test_truncation_keeps_the_end_token(tokenizer):
  ids = tokenizer.encode([' '.join(CAPTIONS[:4])])[0]
  assert ids[-1] == tokenizer.eos_id and tokenizer.pad_id not in ids


def test_unseen_unicode_is_encoded_not_dropped(tokenizer):
  ids = tokenizer.encode(['grün ☃'])[0]
  assert tokenizer.decode(ids[None])[0] == 'grün ☃'


def test_from_file_requires_an_end_token(tmp_path):
  import tokenizers
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({'a': 0, '[UNK]': 1}, unk_token='[UNK]'))
  path = str(tmp_path / 'tokenizer.json')
  tok.save(path)
  with pytest.raises(ValueError, match='no end-of-text token'):
    Tokenizer.from_file(path, 8)


def _optim_cfg(**kw):
  c = base.get_config().optim
  c.update(kw)
  return c


def test_warmup_cosine_schedule():
  schedule = optim.make_schedule(_optim_cfg(lr=1.0, warmup_steps=10, end_lr_fraction=0.1), total_steps=110)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(60)) == pytest.approx(0.55, abs=1e-3)  # halfway down the cosine
  assert float(schedule(110)) == pytest.approx(0.1)


PARAMS = {'img': {'embedding': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)},
                  'encoder_norm': {'scale': jnp.ones(2), 'bias': jnp.ones(2)}, 'pos_embedding': jnp.ones((1, 2))},
          'txt': {'token_embed': {'embedding': jnp.ones((4, 2))}, 'head': {'kernel': jnp.ones((2, 2))}},
          't': jnp.zeros(()), 'b': jnp.zeros(())}


def test_weight_decay_only_on_kernels():
  mask = optim.decay_mask(PARAMS)
  decayed = {optim.path_str(p) for p, m in jax.tree_util.tree_leaves_with_path(mask) if m}
  assert decayed == {'img/embedding/kernel', 'txt/head/kernel'}
  # With zero gradients, AdamW changes exactly the decayed leaves.
  tx, _ = optim.make_optimizer(_optim_cfg(lr=0.1, warmup_steps=0, weight_decay=0.5, clip_norm=0.0), 10, PARAMS)
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)
  updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
  changed = {optim.path_str(p) for p, u in jax.tree_util.tree_leaves_with_path(updates) if jnp.any(u != 0)}
  assert changed == decayed


def test_frozen_regex_freezes_matching_params():
  tx, _ = optim.make_optimizer(_optim_cfg(lr=0.1, warmup_steps=0, frozen='^img/'), 10, PARAMS)
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
  for path, u in jax.tree_util.tree_leaves_with_path(updates):
    name = optim.path_str(path)
    assert bool(jnp.all(u == 0)) == name.startswith('img/'), name
