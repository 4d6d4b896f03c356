"""CLI: python -m vitclip.convert SRC --out DIR [--format ...] [--variant ...] [--tokenizer ...].

Exits with status 2 and one 'Error: ...' line on stderr when the source or tokenizer cannot be converted or the
output cannot be written.
"""

import argparse
import sys

from vitclip.convert import FORMATS, ConvertError, convert


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vitclip.convert', description=__doc__.splitlines()[0])
  parser.add_argument('src', help='HF model folder, OpenAI/open_clip state dict (.safetensors, .pt, .bin) or '
                      'big_vision .npz')
  parser.add_argument('--out', required=True, help='output model directory')
  parser.add_argument('--format', default='auto', choices=FORMATS,
                      help="'openai': QuickGELU; 'open_clip': GELU (open_clip's default)")
  parser.add_argument('--variant', default=None, help="'IMAGE[,TEXT]', e.g. 'B/16' or 'B/16,M' (default: inferred)")
  parser.add_argument('--tokenizer', default=None,
                      help='CLIP tokenizer.json / vocab+merges folder / bpe_simple_vocab_16e6.txt.gz, or a '
                      'SentencePiece .model (required for state dicts and .npz)')
  args = parser.parse_args(argv)
  try:
    config = convert(args.src, args.out, args.format, args.variant, args.tokenizer)
  except (ConvertError, OSError) as e:  # OSError: the output directory cannot be written.
    print('Error: ' + ' '.join(str(e).split()), file=sys.stderr)  # One line, whatever the message holds.
    return 2
  m = config.model
  print(f'Wrote {args.out}: image {m.image.variant} @{m.image.image_size}px, text {m.text.variant} '
        f'(max_len {m.text.max_len}), loss {config.loss.kind}, tokenizer {config.tokenizer.path}.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
