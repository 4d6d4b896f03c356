"""vitclip: CLIP / SigLIP two-tower pretraining and evaluation in JAX.

`vitclip.load(DIR)`, `vitclip.encode_image`, `vitclip.encode_text` and `vitclip.zero_shot_classifier` use a
trained or converted model (see vitclip/api.py); they are imported on first use, so `import vitclip.config`
stays light.
"""

_API = ('load', 'encode_image', 'encode_text', 'zero_shot_classifier')


def __getattr__(name):
  if name in _API:
    from vitclip import api
    return getattr(api, name)
  raise AttributeError(f'module vitclip has no attribute {name!r}')
