"""Every configuration key vitclip reads, with its default.

Neutral defaults: no data set is named here. Experiment configs (`configs/shapes.py` for the CPU demo,
`configs/clip_b16.py` and `configs/siglip_b16.py` for real data) start from `get_config()` and override a few
fields. Every field can be overridden on the command line: `--config.loss.kind=sigmoid`.
"""

import copy

import ml_collections

from vitclip import losses


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 256  # Global batch (all hosts, all devices).

  # ---------------------------------------------------------------- data
  c.data = ml_collections.ConfigDict()
  # TFDS name (prepared under data_dir: `tfds build NAME --file_format=array_record` or `vitclip.data.folder`), or
  # a generated one ('shapes', built on first use from config.data.shapes; see vitclip/data/generated.py).
  c.data.name = ''

  c.data.data_dir = ''  # '' -> $TFDS_DATA_DIR, else ~/tensorflow_datasets.
  c.data.train_split = 'train'
  c.data.shuffle_buffer_seed = 0  # Data order seed; independent of the model init seed.
  c.data.num_workers = 0  # grain worker processes; 0 = in-process (deterministic, enough for small images).
  c.data.prefetch = 2  # Host batches prepared ahead of the train step.
  c.data.mean = (0.5, 0.5, 0.5)  # Per-channel normalisation after scaling to [0, 1].
  c.data.std = (0.5, 0.5, 0.5)
  c.data.crop_scale = (0.8, 1.0)  # Random-resized-crop area range (train only); (1, 1) disables cropping.
  c.data.flip = False  # Horizontal flips would contradict "left of"/"right of" captions.
  # Captions of a labelled data set (contrastive fine-tuning, configs/finetune.py): '' reads the records' own
  # captions; a template set ('clip80', 'clip7') or templates joined by '|' ('a photo of a {}.|a {}.') makes each
  # example's captions from the class name of its ClassLabel feature `label_feature`, one template drawn per step.
  c.data.caption_templates = ''
  c.data.label_feature = 'label'
  # Settings of the generated `shapes` data set (ignored for other data sets).
  c.data.shapes = ml_collections.ConfigDict()
  c.data.shapes.image_size = 64
  c.data.shapes.num_train = 50_000
  c.data.shapes.num_validation = 2_000
  c.data.shapes.num_test = 2_000
  c.data.shapes.seed = 0

  # ----------------------------------------------------------- tokenizer
  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ''  # An existing tokenizer.json; '' trains a BPE on the training captions.
  c.tokenizer.kind = 'bpe'  # 'bpe' (HF tokenizers json) | 'sentencepiece' (a .model file in `path`).
  c.tokenizer.vocab_size = 1000  # Only for training a new BPE.
  c.tokenizer.lowercase = True
  c.tokenizer.train_captions = 20_000  # Captions read to train the BPE.

  # --------------------------------------------------------------- model
  c.model = ml_collections.ConfigDict()
  c.model.embed_dim = 512
  c.model.dtype = 'float32'  # Matmul dtype; 'bfloat16' on accelerators. Params stay float32.
  c.model.remat_policy = 'none'  # 'none' | 'full' | 'dots'
  c.model.scan = False  # Scan over layers: faster compiles for deep towers.
  # Queries per chunk of every encoder's attention, each chunk recomputed in the backward pass: training holds
  # one chunk's [B, heads, chunk, tokens] float32 weights at a time (0 = all queries at once). Same values.
  c.model.attention_chunk = 0
  # Tokens per chunk of every encoder's MLP, each chunk recomputed in the backward pass: training holds one
  # chunk's [B, chunk, mlp_dim] hidden activations at a time (0 = all tokens at once). Same values.
  c.model.mlp_chunk = 0
  # None = by loss kind, from loss.init_by_kind: softmax t=1/0.07, no bias, t <= 100 (CLIP);
  # sigmoid t=10, b=-10, t unclamped (SigLIP).
  c.model.t_init = ml_collections.FieldReference(None, field_type=float)  # Logit scale multiplier t at init.
  c.model.b_init = ml_collections.FieldReference(None, field_type=float)  # Logit bias b at init.
  c.model.t_max = ml_collections.FieldReference(None, field_type=float)  # Clamp t after each step; 0: never.
  c.model.image = ml_collections.ConfigDict()
  c.model.image.variant = 'B/16'
  c.model.image.image_size = 224
  c.model.image.posemb = 'learn'  # 'learn' | 'sincos2d'
  c.model.image.cls_token = True
  c.model.image.num_registers = 0  # Learned register tokens (Darcet et al. 2024), dropped from the output.
  c.model.image.attention_radius = 0  # Patch tokens attend within this many grid steps; 0 = global attention.
  c.model.image.ln_pre = False  # OpenAI CLIP normalises the embedded tokens before the encoder.
  c.model.image.pool = 'tok'  # 'tok' | 'gap' | 'map'
  c.model.image.act = 'gelu'  # 'gelu' | 'gelu_tanh' | 'quick_gelu'
  c.model.image.ln_eps = 1e-6
  c.model.image.patch_bias = True
  # 'patch': one p x p conv of stride p (ViT). 'conv': log2(p) stride-2 3x3 convs + LayerNorm + activation, then
  # a 1x1 conv (ViTc, Xiao et al. 2021); same token grid, faster to optimise on small data.
  c.model.image.stem = 'patch'
  c.model.image.head = 'linear'  # 'linear' | 'none' (needs width == embed_dim)
  c.model.image.head_bias = False
  c.model.text = ml_collections.ConfigDict()
  c.model.text.variant = 'B'
  c.model.text.vocab_size = 1000  # Set from the tokenizer at run time when a tokenizer is trained.
  c.model.text.max_len = 16
  c.model.text.causal = True
  c.model.text.mask_pad = True  # Bidirectional: pad keys are masked; False attends to pads too (SigLIP).
  # 'eos' | 'last' (last non-pad) | 'final' (position L-1, SigLIP) | 'first' | 'mean' | 'map'
  c.model.text.pool = 'eos'
  c.model.text.eos_id = 2  # Set from the tokenizer at run time; -1: argmax of ids (OpenAI).
  c.model.text.pad_id = 0
  c.model.text.act = 'gelu'
  c.model.text.ln_eps = 1e-6
  c.model.text.head = 'linear'
  c.model.text.head_bias = False

  # ---------------------------------------------------------------- loss
  c.loss = ml_collections.ConfigDict()
  c.loss.kind = 'softmax'  # 'softmax' (CLIP InfoNCE) | 'sigmoid' (SigLIP)
  c.loss.impl = 'dense'  # 'dense' | 'gather' | 'ring'
  c.loss.softmax_weight = 0.5  # Weight of image->text in the softmax loss; text->image gets 1 - w.
  # Per loss kind, the values of model.t_init / b_init / t_max left as None: CLIP (Radford et al. 2021) and
  # SigLIP (Zhai et al. 2023). Configs may change them for one kind, e.g. loss.init_by_kind.sigmoid.b_init.
  c.loss.init_by_kind = ml_collections.ConfigDict({k: copy.deepcopy(v.init) for k, v in losses.KINDS.items()})

  # ---------------------------------------------------- image token masking
  # FLIP (Li et al. 2023): in training only, drop a random `mask_ratio` of the image patch tokens after the
  # position embedding (a fresh mask per example and step); evaluation always sees every token.
  c.flip = ml_collections.ConfigDict()
  c.flip.mask_ratio = 0.0  # 0 = off; the paper uses 0.5 and 0.75.
  c.flip.unmasked_steps = 0  # The last N steps train on every token (FLIP's unmasked tuning); 0 = none.

  # A-CLIP (Yang et al. 2023, Attentive Mask CLIP): an EMA copy of the image tower scores the patches by the
  # attention they receive; two masked views keep the best-scored tokens; auxiliary SimCLR and BYOL losses.
  # See vitclip/aclip.py. Paper defaults.
  c.aclip = ml_collections.ConfigDict()
  c.aclip.enabled = False
  c.aclip.keep_ratio = 0.5  # Fraction of the patch tokens each masked view keeps.
  c.aclip.unit = 2  # Tokens are kept or dropped in unit x unit blocks of the patch grid (2 x 2 in the paper).
  c.aclip.selection = 'high'  # 'high' (best-scored) | 'low' | 'mixture' (half best-scored, half random)
  c.aclip.view_crop_scale = (0.5, 1.0)  # Area range of the two views' random crops (their union is scored).
  c.aclip.score_scale = 1.0  # The EMA tower scores the union view at this fraction of the resolution (eff: 0.5).
  c.aclip.ema_momentum = 0.996  # EMA momentum at step 0; rises to ema_momentum_end on a cosine.
  c.aclip.ema_momentum_end = 1.0
  c.aclip.clip_weight = 0.5  # Weight of the image-text loss of each of the two views.
  c.aclip.simclr_weight = 1.0  # Cross-view InfoNCE between the two masked views.
  c.aclip.simclr_temperature = 0.1
  c.aclip.byol_weight = 2.0  # Online view (through the predictor) vs the EMA tower's embedding of the image.
  c.aclip.mlp_hidden = 4096  # Hidden width of the SimCLR projection and the BYOL predictor MLPs.
  c.aclip.mlp_out = 256  # Output width of the SimCLR projection (the predictor outputs embed_dim).

  # Classifier fine-tuning (vitclip/classifier.py): the image tower plus a linear head initialised from the
  # zero-shot classifier of init_from's text tower, cross-entropy on the labels of `data.label_feature`. Only the
  # image tower and the head train. Evaluate with evals.names=('classifier',) (WiSE-FT mixes included).
  c.classifier = ml_collections.ConfigDict()
  c.classifier.enabled = False
  c.classifier.label_smoothing = 0.0
  # Prompts of the head's initial (zero-shot) classifier: '' = data.caption_templates, else evals.zeroshot's.
  c.classifier.templates = ''
  c.classifier.num_classes = 0  # Filled in from the data set's `data.label_feature` ClassLabel.

  # ----------------------------------------------------------- optimizer
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.optim.schedule = 'cosine'  # 'cosine' | 'constant' (both after linear warmup)
  c.optim.end_lr_fraction = 0.0  # Final lr as a fraction of the peak (cosine).
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95  # SigLIP: 0.95 stabilises large-batch training.
  c.optim.eps = 1e-8
  c.optim.weight_decay = 1e-4  # Decoupled; not applied to norms, biases, embeddings, t, b.
  c.optim.clip_norm = 1.0  # Global-norm gradient clipping; 0 disables.
  c.optim.frozen = ''  # Regex of parameter paths to freeze (LiT: '^img/').
  # Layer-wise lr decay (BEiT): block i of L gets lr x layer_decay^(L - i), the embeddings ^(L + 1); 1 = off.
  c.optim.layer_decay = 1.0

  # ---------------------------------------------------- mesh & sharding
  # Axis names and sizes; -1 takes the remaining devices. The batch is sharded over every axis but 'model'.
  c.mesh = [('data', -1)]
  c.sharding = ml_collections.ConfigDict()
  c.sharding.params = 'replicate'  # 'replicate' | 'fsdp' (shard big params over the 'fsdp' axis)
  c.sharding.fsdp_min_size = 2**18  # Params with fewer elements stay replicated under 'fsdp'.
  c.grad_cache = ml_collections.ConfigDict()
  c.grad_cache.microbatch = 0  # >0: embed the batch in microbatches of this size (GradCache); 0: off.

  # --------------------------------------------------- logging & saving
  c.log_every = 50
  c.ckpt_every = 500
  c.keep_ckpts = 3
  c.eval_every = 0  # 0: evaluate at the end only.
  # Steps whose loss, gradient, update or new params are not finite are not applied; this many in a row stop the
  # run (no checkpoint is written from a diverged state).
  c.max_skipped_steps = 5
  # Start from the params of a model directory: a converted checkpoint (vitclip.convert) or a vitclip workdir.
  # The model fields must match DIR/config.json (configs/pretrained.py:DIR,shapes copies them), except
  # model.image.image_size: the learned image position embedding is resampled to the new grid.
  # With the text tower loaded and no tokenizer.path, the run uses DIR's tokenizer. See vitclip/init_from.py.
  c.init_from = ''
  c.init_from_towers = ''  # Comma-separated top-level params to load: img, txt, t, b. '' = all of this model's.

  # ----------------------------------------------------------- evaluation
  # Evaluation follows the training data: retrieval with no data set named evaluates config.data.name (when it has
  # the split); zero-shot and dense evaluate only the data sets named. Nothing else is ever read.
  c.evals = ml_collections.ConfigDict()
  c.evals.names = ('retrieval',)  # Evaluators to run; see vitclip/evaluators/__init__.py.
  c.evals.batch_size = 256
  c.evals.zeroshot = ml_collections.ConfigDict()
  # Classification data sets: 'name' (classes in the ClassLabel feature 'label') or 'name:feature'.
  c.evals.zeroshot.datasets = ()
  c.evals.zeroshot.split = 'test'
  c.evals.zeroshot.templates = 'clip80'  # 'clip80' | 'clip7' | 'none' | templates with '{}' joined by '|'.
  # {result key ('name', or 'name_feature' for 'name:feature'): templates}: other prompts for one data set entry.
  c.evals.zeroshot.templates_for = ml_collections.ConfigDict()
  c.evals.zeroshot.classnames_files = ml_collections.ConfigDict()  # {dataset: file with one name per line}
  c.evals.zeroshot.aliases = ''  # 'name=alias,...': replace individual class names in the prompts.

  # Image <-> text retrieval (vitclip/evaluators/retrieval.py): R@1/5/10 both ways, all captions of each image.
  c.evals.retrieval = ml_collections.ConfigDict()
  c.evals.retrieval.datasets = ()  # TFDS names whose records hold an image and captions; () = config.data.name.
  c.evals.retrieval.split = 'validation'
  c.evals.retrieval.max_examples = 0  # Evaluate the first N images only; 0 = all.

  # MaskCLIP-style dense probing (vitclip/evaluators/dense.py): training-free segmentation, mIoU.
  c.evals.dense = ml_collections.ConfigDict()
  c.evals.dense.datasets = ()  # 'name' (mask in `mask_feature`) or 'name:mask_feature'.
  c.evals.dense.split = 'validation'
  c.evals.dense.max_examples = 0  # Evaluate the first N images only; 0 = all.
  c.evals.dense.mask_feature = 'mask'  # int [H, W]: 0 = background, k + 1 = class k, ignore_index = unscored.
  c.evals.dense.ignore_index = 255
  # Foreground class names (mask value k + 1 = name k): a file from `classnames_files` {dataset: path, one name
  # per line}, else the ClassLabel feature `class_feature`.
  c.evals.dense.classnames_files = ml_collections.ConfigDict()
  c.evals.dense.class_feature = 'label'
  c.evals.dense.aliases = ''  # 'name=alias,...': replace individual class names in the prompts.
  c.evals.dense.templates = 'clip80'  # As evals.zeroshot.templates.
  c.evals.dense.method = 'maskclip'  # Last-block mode: 'none' | 'maskclip' | 'reduced' | 'sclip' | 'clearclip'.
  c.evals.dense.key_smoothing = False  # MaskCLIP KS: pred_i = mean_j cos(k_i, k_j) pred_j (last-block keys).
  c.evals.dense.prompt_denoising = False  # MaskCLIP PD: drop classes whose max probability < pd_threshold.
  c.evals.dense.pd_threshold = 0.5  # MaskCLIP.
  c.evals.dense.temperature = 100.0  # Class probabilities = softmax(temperature * cosine) (MaskCLIP: 100).
  # 'prompt': background is a class, the max over one text row per background name (x templates);
  # 'threshold': background where the max foreground probability < bg_threshold.
  c.evals.dense.background = 'prompt'
  c.evals.dense.background_prompts = ('background',)
  c.evals.dense.bg_threshold = 0.5
  c.evals.dense.input_size = 0  # Images are resized to input_size^2 for inference; 0 = model resolution.
  # Sliding windows (pixels, multiples of the patch size) over the resized image; slide_size 0 = off.
  c.evals.dense.slide_size = 0
  c.evals.dense.slide_stride = 0
  # Multi-scale inference (mmseg's multi-scale test): more input sizes, e.g. (48, 96); every size's per-class
  # scores are upsampled to the mask and averaged before the argmax. () = input_size alone.
  c.evals.dense.input_sizes = ()
  c.evals.dense.sweep = False  # Also report every method x (KS+PD off / on): dense/<ds>/<method>[_kspd]/miou.
  c.evals.dense.num_overlays = 8  # PNGs image | prediction | truth in <workdir>/dense_overlays/; 0 = none.

  # Linear probe and k-shot probes (vitclip/evaluators/linear_probe.py): multinomial logistic regression on frozen
  # image features, L2 strength chosen on held-out data, refit on all of train, top-1 on the test split.
  c.evals.linear_probe = ml_collections.ConfigDict()
  c.evals.linear_probe.datasets = ()  # 'name' (classes in the ClassLabel feature 'label') or 'name:feature'.
  c.evals.linear_probe.train_split = 'train'
  c.evals.linear_probe.test_split = 'test'
  # Held-out data for choosing l2: a split (e.g. 'validation'), or '' = a stratified val_fraction of train.
  c.evals.linear_probe.val_split = ''
  c.evals.linear_probe.val_fraction = 0.2
  # Strengths l2 of mean cross-entropy + (l2 / 2) ||W||^2 (scikit-learn's C = 1 / (l2 * n) for n examples), on
  # features centred and scaled to root mean square norm 1.
  c.evals.linear_probe.l2_grid = tuple(10.0 ** (e / 2) for e in range(-14, 1))  # 1e-7 ... 1, x sqrt(10).
  c.evals.linear_probe.shots = (1, 2, 4, 8, 16)  # k-shot probes: k training examples per class; () = none.
  c.evals.linear_probe.draws = 5  # Seeded draws per k (mean and standard deviation reported).
  c.evals.linear_probe.shots_l2 = 'search'  # 'search': l2 chosen per k on the held-out data; 'full': the full probe's.
  c.evals.linear_probe.seed = 0  # Held-out part, k-shot draws, max_examples subsets.
  c.evals.linear_probe.max_examples = 0  # Per split, a seeded random subset of at most N images; 0 = all.
  c.evals.linear_probe.tol = 1e-5  # Converged when the largest absolute gradient entry is at most tol.
  c.evals.linear_probe.max_steps = 1000  # L-BFGS steps per fit at most (a fit that stops there is a warning).

  # A classifier fine-tuning run's head (vitclip/evaluators/classifier.py): top-1 of the fine-tuned model and of
  # the WiSE-FT mixes (1 - alpha) zero-shot + alpha fine-tuned, on config.data.name by data.label_feature.
  c.evals.classifier = ml_collections.ConfigDict()
  c.evals.classifier.split = 'test'
  c.evals.classifier.wise_alphas = (0.0, 0.5)  # 0 = the zero-shot model (init_from and the zero-shot head).

  # Open-vocabulary detection by a CLIP cascade (vitclip/evaluators/detection.py): region proposals, each crop
  # embedded and scored against the text classifier, per-class NMS; AP@0.5 and AR against ground-truth boxes.
  c.evals.detection = ml_collections.ConfigDict()
  c.evals.detection.datasets = ()  # Data sets with per-object boxes: 'shapes' (its objects + mask features).
  c.evals.detection.split = 'validation'  # shapes: 'validation' holds multi-object scenes ('test' one object).
  c.evals.detection.max_examples = 0  # Evaluate the first N images only; 0 = all.
  c.evals.detection.objects_feature = 'objects'  # float [K, 6] (shape, color, size, x, y, radius) per object.
  c.evals.detection.mask_feature = 'mask'  # int [H, W], 0 background, k + 1 class k: ground-truth boxes.
  c.evals.detection.class_feature = 'label'  # ClassLabel naming the classes (or classnames_files).
  c.evals.detection.classnames_files = ml_collections.ConfigDict()  # {dataset: file with one name per line}
  c.evals.detection.aliases = ''  # 'name=alias,...': replace individual class names in the prompts.
  c.evals.detection.templates = 'clip80'  # As evals.zeroshot.templates.
  # Background text rows (each x templates; their max is the background logit); () = no background text, a
  # class wins the per-class map only where its probability reaches bg_threshold.
  c.evals.detection.background_prompts = ('background',)
  c.evals.detection.bg_threshold = 0.5
  c.evals.detection.temperature = 100.0  # Class probabilities = softmax(temperature * cosine), as CLIP's 100.
  # Proposal methods, each reported: 'components' (connected components of each class in the per-class map),
  # 'grid' (multi-scale sliding square boxes), 'merge' (selective-search grouping of those components).
  c.evals.detection.methods = ('components', 'grid', 'merge')
  # Per-class map of 'components' / 'merge': last-block mode of the patch features ('none' | 'maskclip' |
  # 'reduced' | 'sclip' | 'clearclip') and the input sizes averaged (multiples of the patch; () = model size).
  c.evals.detection.dense_mode = 'maskclip'
  c.evals.detection.map_sizes = ()
  c.evals.detection.min_area = 4  # Components of fewer pixels are noise, not proposals.
  c.evals.detection.grid_scales = (0.25, 0.375, 0.5, 0.625)  # Grid box sides, fractions of the shorter side.
  c.evals.detection.grid_stride = 0.5  # Grid step, a fraction of the box side.
  c.evals.detection.merge_gap = 2  # Regions at most this many pixels apart are neighbours that may merge.
  c.evals.detection.crop_size = 0  # Crops are resized to crop_size^2 for the image tower; 0 = model resolution.
  c.evals.detection.crop_context = 0.1  # Each crop grows by this fraction of its box size per side (clipped).
  c.evals.detection.score_threshold = 0.5  # A detection's best-class probability must reach this.
  c.evals.detection.nms_iou = 0.5  # Per-class NMS drops boxes overlapping a better one by more than this IoU.
  c.evals.detection.max_detections = 100  # Per image, after NMS.
  c.evals.detection.ar_at = (1, 10, 100)  # Average recall of the first N proposals by score: ar@N.
  c.evals.detection.num_overlays = 4  # PNGs in <workdir>/detection_overlays/<dataset>/; 0 = none.
  return c
