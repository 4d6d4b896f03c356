"""Prompt template sets: zero-shot classifiers' prompts and the captions made from class names for contrastive
fine-tuning on a labelled data set (config.data.caption_templates). `{}` is replaced by the class name.

Prompts for one data set (the shapes world's, say) are config values, not sets here: `templates` takes any
'|'-joined list, and `config.evals.zeroshot.templates_for` overrides it per result key.
"""

from vitclip.errors import ConfigError

# The 80 prompts of the CLIP ImageNet zero-shot protocol (Radford et al. 2021).
CLIP80 = (
    'a bad photo of a {}.', 'a photo of many {}.', 'a sculpture of a {}.', 'a photo of the hard to see {}.',
    'a low resolution photo of the {}.', 'a rendering of a {}.', 'graffiti of a {}.', 'a bad photo of the {}.',
    'a cropped photo of the {}.', 'a tattoo of a {}.', 'the embroidered {}.', 'a photo of a hard to see {}.',
    'a bright photo of a {}.', 'a photo of a clean {}.', 'a photo of a dirty {}.', 'a dark photo of the {}.',
    'a drawing of a {}.', 'a photo of my {}.', 'the plastic {}.', 'a photo of the cool {}.',
    'a close-up photo of a {}.', 'a black and white photo of the {}.', 'a painting of the {}.',
    'a painting of a {}.', 'a pixelated photo of the {}.', 'a sculpture of the {}.', 'a bright photo of the {}.',
    'a cropped photo of a {}.', 'a plastic {}.', 'a photo of the dirty {}.', 'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.', 'a photo of the {}.', 'a good photo of the {}.', 'a rendering of the {}.',
    'a {} in a video game.', 'a photo of one {}.', 'a doodle of a {}.', 'a close-up photo of the {}.',
    'a photo of a {}.', 'the origami {}.', 'the {} in a video game.', 'a sketch of a {}.', 'a doodle of the {}.',
    'a origami {}.', 'a low resolution photo of a {}.', 'the toy {}.', 'a rendition of the {}.',
    'a photo of the clean {}.', 'a photo of a large {}.', 'a rendition of a {}.', 'a photo of a nice {}.',
    'a photo of a weird {}.', 'a blurry photo of a {}.', 'a cartoon {}.', 'art of a {}.', 'a sketch of the {}.',
    'a embroidered {}.', 'a pixelated photo of a {}.', 'itap of the {}.', 'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.', 'a plushie {}.', 'a photo of the nice {}.', 'a photo of the small {}.',
    'a photo of the weird {}.', 'the cartoon {}.', 'art of the {}.', 'a drawing of the {}.',
    'a photo of the large {}.', 'a black and white photo of a {}.', 'the plushie {}.', 'a dark photo of a {}.',
    'itap of a {}.', 'graffiti of the {}.', 'a toy {}.', 'itap of my {}.', 'a photo of a cool {}.',
    'a photo of a small {}.', 'a tattoo of the {}.',
)

# The 7-prompt subset selected in the CLIP repository's ImageNet notebook.
CLIP7 = ('itap of a {}.', 'a bad photo of the {}.', 'a origami {}.', 'a photo of the large {}.',
         'a {} in a video game.', 'art of the {}.', 'a photo of the small {}.')

SETS = {'clip80': CLIP80, 'clip7': CLIP7, 'none': ('{}',)}


def get_templates(spec, field: str = 'config.evals.zeroshot.templates') -> tuple[str, ...]:
  """A set name ('clip80' | 'clip7' | 'none'), an explicit sequence of templates, or templates joined by '|' (a
  string, so it can be given on the command line: --config.evals.zeroshot.templates='a {}.|a {} photo.').

  Raises:
    ConfigError: an unknown set or a template without '{}', naming `field` (the config field of `spec`).
  """
  if not isinstance(spec, str):
    templates = tuple(spec)
  elif '{}' in spec:
    templates = tuple(t.strip() for t in spec.split('|') if t.strip())
  else:
    if spec not in SETS:
      raise ConfigError(f'{field}={spec!r}: template set {spec!r} is unknown; use one of {sorted(SETS)} or '
                        'templates containing "{}" joined by "|".')
    templates = SETS[spec]
  bad = [t for t in templates if '{}' not in t]
  if bad or not templates:
    raise ConfigError(f'{field}: templates {bad or templates!r} must each contain "{{}}" for the class name.')
  return templates
