r"""MaskCLIP+ on the shapes world: a segmentation model trained on a Quickstart model's own pseudo-masks.

  python -m vitclip.segmentation --config configs/maskclip_plus_shapes.py --workdir OUT --config.model=DIR
  python -m vitclip.segmentation --config configs/maskclip_plus_shapes.py --workdir OUT --config.model=DIR \
      --config.head=aspp --config.rounds=1 --config.steps=200

DIR is a training workdir (python train.py --config configs/shapes.py) or a converted model. This file declares
every field vitclip/segmentation.py reads (its docstring describes the stages); a rerun of the same command skips
the finished stages.
"""

import ml_collections

from configs import shapes


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.model = ''  # The model directory (required): its image tower, text tower (pseudo-masks) and data settings.
  # TFDS data dir; '' = the model's (config.json's data.data_dir, $TFDS_DATA_DIR, ~/tensorflow_datasets).
  c.data_dir = ''
  # The training-free setting that makes round 0's pseudo-masks and is the baseline: the Quickstart's dense
  # evaluation (plain last-layer tokens with Key Smoothing and Prompt Denoising, four background prompts, six
  # input sizes; configs/shapes.py). Exactly one data set; its split / max_examples / num_overlays are set per use.
  c.dense = shapes.get_config().evals.dense
  c.train_split = 'train'  # Unlabelled training images (their masks are read only to score the pseudo-masks).
  c.train_examples = 4000  # The first N images of train_split.
  c.eval_splits = ('validation', 'test')  # Every stage is scored on each.
  c.eval_examples = 0  # The first N images of each evaluation split; 0 = all.
  c.eval_batch_size = 250  # Images per inference batch (pseudo-masks, evaluation).
  c.num_overlays = 4  # PNGs (image | prediction | truth) of the first N images per split and stage.

  # The segmenter: the model's image tower -> patch features -> head -> per-pixel logits (background + classes).
  c.head = 'decoder'  # 'decoder' (TransUNet-style cascaded upsampling with skips) | 'aspp' (DeepLab v3).
  c.features = 'none'  # Dense mode of the tower's patch features: 'none' (last-layer tokens), 'maskclip', ...
  c.image_size = 0  # Segmenter input size in pixels (a multiple of the patch size); 0 = the model's resolution.
  c.decoder_channels = (64, 32, 16)  # Per upsampling stage (each doubles the resolution): 8 px patches -> pixels.
  c.aspp_channels = 64
  c.aspp_rates = (1, 2, 3)  # Atrous rates in patches (a 48 px image is a 6 x 6 patch grid).

  # Pseudo-masks: pixels below the confidence get the ignore label (config.dense.ignore_index) and no loss.
  c.confidence = 0.5  # Round 0: the MaskCLIP scores' top share (vitclip/segmentation.py, "Confidence").
  c.self_confidence = 0.9  # Rounds >= 1: the segmenter's top softmax probability.
  # Rounds >= 1: also the most confident fraction of each predicted class's pixels, whatever their probability
  # (0 = the global threshold only): a segmenter less sure of the shapes than of the background would otherwise
  # pass on background alone.
  c.self_class_fraction = 0.5
  c.rounds = 2  # Self-training rounds after the round trained on MaskCLIP's pseudo-masks.

  # Training, per round (a fresh optimizer each round; self-training continues from the previous segmenter).
  c.steps = 300
  c.batch_size = 32  # A multiple of the device count.
  c.lr = 2e-3  # Peak learning rate of the head (warmup, then cosine to 0).
  c.tower_lr_multiplier = 0.1  # The image tower learns at lr x this; 0 freezes it.
  c.warmup_steps = 30
  c.weight_decay = 1e-4
  c.flip = True  # Random horizontal flips of image and pseudo-mask together.
  c.seed = 0  # Head init, batch order, flips.
  c.log_every = 50
  return c
