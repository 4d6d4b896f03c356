"""Transformer size table: a variant name such as "B/16" decodes to width, depth, MLP size, heads (and patch size).

Sizes follow big_vision's ViT table and the SigLIP paper (So400m). `tiny` and `micro` are local additions: `tiny`
trains on a laptop CPU in minutes (configs/shapes.py) and `micro` keeps unit tests fast.
"""

# name: (width, depth, mlp_dim, num_heads)
_SIZES = {
    'micro': (32, 2, 64, 2),
    'tiny': (96, 3, 384, 3),
    'mu': (32, 1, 128, 2),
    'Ti': (192, 12, 768, 3),
    'S': (384, 12, 1536, 6),
    'M': (512, 12, 2048, 8),
    'B': (768, 12, 3072, 12),
    'L': (1024, 24, 4096, 16),
    'So400m': (1152, 27, 4304, 16),
    'H': (1280, 32, 5120, 16),
    'g': (1408, 40, 6144, 16),
}

VARIANTS = {
    name: dict(width=w, depth=d, mlp_dim=m, num_heads=h) for name, (w, d, m, h) in _SIZES.items()
}


def decode_variant(variant: str) -> dict:
  """Decodes a variant name into transformer hyper-parameters.

  Args:
    variant: a size name from `VARIANTS`, optionally followed by "/<patch size>", e.g. "B/16", "So400m/14", "M".

  Returns:
    dict(width, depth, mlp_dim, num_heads) plus `patch_size` when the name carries one.

  Raises:
    ValueError: unknown size name or a patch size that is not a positive integer.
  """
  name, sep, patch = str(variant).partition('/')
  if name not in VARIANTS:
    raise ValueError(f'Unknown model variant {variant!r}; valid sizes are {sorted(VARIANTS)}, '
                     'optionally with a patch size such as "B/16".')
  out = dict(VARIANTS[name])
  if sep:
    if not patch.isdigit() or int(patch) <= 0:
      raise ValueError(f'Model variant {variant!r} has patch size {patch!r}; use a positive integer, e.g. "B/16".')
    out['patch_size'] = int(patch)
  return out
