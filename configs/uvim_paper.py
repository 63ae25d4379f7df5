r"""UViM as in the paper: COCO panoptic, NYU depth v2, ImageNet colorization.

The configs of the UViM paper (Kolesnikov et al. 2022, Appendix D) as
big_vision releases them (`big_vision/configs/proj/uvim/vqvae_*.py` for
stage I, `train_*_pretrained.py` for stage II), at 512x512 with 16x16
patches, in uvimx's keys. Variants `{task}_{stage}` with task panoptic, depth
or colorization and stage stage1 or stage2:

  {task}_stage1  the restricted oracle (ViT-B, 6 layers) and base model
                 (ViT-B, 12 layers) joined by a code of 256 words from a
                 4096-word dictionary, trained from scratch.
  {task}_stage2  the LM: a ViT-L/16 encoder (initialised from ImageNet-21k,
                 lr x 0.1) and a 24-layer decoder of the same width, learning
                 the frozen stage-I model's code.

  python train.py --config configs/uvim_paper.py:panoptic_stage1 \
      --workdir /tmp/coco_s1
  python train.py --config configs/uvim_paper.py:panoptic_stage2 \
      --config.oracle.checkpoint=/tmp/coco_s1/checkpoints/N \
      --config.encoder_init=/path/vit_l16_i21k.npz \
      --config.evals.coco_panoptic.categories=/path/categories.json \
      --workdir /tmp/coco_s2

The stage-I checkpoint may also be one of big_vision's released ones
(gs://big_vision/uvim/{panoptic,depth,color}_stageI_params.npz). The TFDS
datasets must be prepared beforehand (COCO and ImageNet need manual
downloads); `--config.input.data.data_dir` sets where they are, for training
and evaluation at once.

Where these configs differ from big_vision's (uvimx works differently or
lacks a piece):
- Stage II reads one image at 512x512 for both the LM and the stage-I model
  (big_vision's `image` and `image_ctx`, which its configs give the same
  size); the paper's 1280x1280 panoptic LM input would need them apart.
- Panoptic metrics are computed on labels (and COCO's crowd map) resized to
  512x512 (nearest), not on the original-resolution ground truth: uvimx's
  predict fns return predictions at the label size. NYU depth metrics are,
  as in the paper and big_vision, at the Eigen crop's own 426x560: the
  depth evaluator resizes the 512x512 predictions to it (nearest).
- big_vision's stage-I `val` evaluator (the mean loss on the holdout split)
  has no uvimx counterpart, as the stage-I trainer has no per-example loss
  predict fn; the codebook usage on the holdout split is reported instead.
- big_vision's ImageNet pp ops `decode_jpeg_and_inception_crop` and
  `flip_lr` are written with uvimx's `inception_box`/`crop_box` and
  `randu`/`det_fliplr` (the same distributions; uvimx decodes the whole JPEG
  first); `strong_hash` (image ids as sampling seeds) is not needed, as the
  stage-II trainer seeds every example from its image.
- Colorization FID: big_vision's `coltran_fid` compares 5000 colorized
  validation images to 5000 real ones with its own Inception; uvimx's
  colorization evaluator computes FID between predictions and labels of
  the split from Inception-v3 weights the user provides
  (`inception_weights`; without them only PSNR).
- The stage-II encoder initialisation: see `encoder_init` below.
- big_vision's `singlehost` and `runlocal` variants are not reproduced; the
  defaults below are the paper's (big_vision's multi-host) settings.
"""
import ml_collections

RES = 512
PATCH = 16

# The stage-I model of all three tasks (big_vision's VQVAE_MODELS["base"]).
_STAGE1_MODEL = dict(
    input_size=(RES, RES), patch_size=(PATCH, PATCH), code_len=256,
    width=768, enc_depth=6, dec_depth=12, mlp_dim=3072, num_heads=12,
    dict_size=4096, codeword_dim=768, dict_momentum=0.995,
    with_encoder_ctx=True, with_decoder_ctx=True, code_dropout="random",
    bottleneck_resize=True)

# The stage-II LM (big_vision's VTT_MODELS["large"]): encoder and decoder
# both have `num_layers`, so the decoder is ViT-L sized too (the paper's text
# says ViT-B; its released configs use "large").
_LM_MODEL = dict(num_layers=24, num_heads=16, mlp_dim=4096, emb_dim=1024,
                 posemb_type="learn")

# panopticapi's panoptic_coco_categories.json (its i-th entry is semantic id
# i + 1, as the `coco_panoptic` op numbers labels); a path relative to the
# working directory unless overridden.
COCO_CATEGORIES = "panoptic_coco_categories.json"
# UViM's stage II: the pre-trained encoder learns 10x slower than the decoder
# (config.lr_mults; first match wins). Shared by the configs with a stage II.
PRETRAINED_ENCODER_LR_MULTS = (("pos_embedding_encoder.*", 0.1),
                               ("EmbedPatches.*", 0.1), ("encoder.*", 0.1),
                               ("decoder.*", 1.0))

# Per task: datasets, pp, task arguments, evaluators and the per-stage
# hyper-parameters that differ (big_vision tunes lr, wd and epochs per task).
# Training pp: random flip, Inception crop, square resize; evaluation pp:
# square resize only. Panoptic instance ids are made canonical (raster order
# of centres) after the crop and flip, as in big_vision; uvimx's op takes the
# one-channel instance map, so the channels are concatenated last.
_PANOPTIC_EVAL_PP = (
    "decode|coco_panoptic|"
    f"resize({RES})|resize({RES}, key='semantics', method='nearest')|"
    f"resize({RES}, key='instances', method='nearest')|"
    "value_range(-1, 1)|make_canonical|"
    "concat(['semantics', 'instances'], 'labels')|keep('image', 'labels')")
# The PQ evaluators also need COCO's crowd regions (panopticapi neither
# counts a missed one as FN nor a prediction on one as FP); the codebook and
# loss evaluators need only the model inputs above.
_PANOPTIC_PQ_PP = _PANOPTIC_EVAL_PP.replace(
    "keep('image', 'labels')",
    f"resize({RES}, key='crowd', method='nearest')|"
    "keep('image', 'labels', 'crowd')")
_NYU_EVAL_PP = (
    "decode|nyu_depth(key='depth')|nyu_eval_crop(keys=('image', 'depth'))|"
    f"resize({RES})|resize({RES}, key='depth', method='nearest')|"
    "value_range(-1, 1)|keep('image', 'depth')")
# The depth metrics, as the paper's ("at test time, we resize UViM outputs to
# the crop resolution via nearest neighbour"), compare with the Eigen-cropped
# ground truth itself, kept as `ground_truth` before the resize; `depth`
# (512x512) is the stage-I oracle's input.
_NYU_DEPTH_PP = (
    "decode|nyu_depth(key='depth')|nyu_eval_crop(keys=('image', 'depth'))|"
    "copy('depth', 'ground_truth')|"
    f"resize({RES})|resize({RES}, key='depth', method='nearest')|"
    "value_range(-1, 1)|keep('image', 'depth', 'ground_truth')")
_COLOR_EVAL_PP = (
    f"decode|resize({RES})|copy('image', 'labels')|rgb_to_grayscale_to_rgb|"
    "value_range(-1, 1)|value_range(-1, 1, key='labels')|"
    "keep('image', 'labels')")

_TASKS = {
    "panoptic": dict(
        dataset="coco/2017_panoptic", train_split="train[4096:]",
        val_split="train[:4096]",
        pp=("decode|coco_panoptic|randu('fliplr')|det_fliplr(key='image')|"
            "det_fliplr(key='semantics')|det_fliplr(key='instances')|"
            "inception_box|crop_box(key='image')|crop_box(key='semantics')|"
            f"crop_box(key='instances')|resize({RES})|"
            f"resize({RES}, key='semantics', method='nearest')|"
            f"resize({RES}, key='instances', method='nearest')|"
            "value_range(-1, 1)|make_canonical|"
            "concat(['semantics', 'instances'], 'labels')|"
            "keep('image', 'labels')"),
        pp_eval=_PANOPTIC_EVAL_PP, pp_task_eval=_PANOPTIC_PQ_PP,
        # 133 classes + void; 100 instance channels (COCO has at most 98
        # segments per training image, 78 per validation image).
        # min_fraction 0: big_vision's configs leave the 0.03**2 filter
        # commented out (the paper mentions 0.1%).
        task=dict(name="panoptic", num_classes=133 + 1, max_instances=100,
                  min_fraction=0.0),
        evals=dict(
            coco_panoptic_train=dict(split="train[4096:8192]"),
            coco_panoptic_holdout=dict(split="train[:4096]"),
            coco_panoptic=dict(split="validation")),
        eval_args=dict(type="panoptic", crowd_key="crowd", log_steps=10_000),
        stage1=dict(batch_size=1024, total_epochs=1000, lr=4e-4, wd=4e-5),
        stage2=dict(batch_size=512, total_epochs=200)),
    "depth": dict(
        # big_vision trains on all of TFDS nyu_depth_v2's train split.
        dataset="nyu_depth_v2", train_split="train",
        val_split="validation",
        pp=("decode|nyu_depth(key='depth')|randu('fliplr')|"
            "det_fliplr(key='image')|det_fliplr(key='depth')|inception_box|"
            "crop_box(key='image')|crop_box(key='depth')|"
            f"resize({RES})|resize({RES}, key='depth', method='nearest')|"
            "value_range(-1, 1)|keep('image', 'depth')"),
        pp_eval=_NYU_EVAL_PP, pp_task_eval=_NYU_DEPTH_PP,
        task=dict(name="depth", num_bins=256, min_depth=1e-3, max_depth=10.0),
        evals=dict(nyu_depth_val=dict(split="validation")),
        eval_args=dict(type="depth", min_depth=1e-3, max_depth=10.0,
                       label_key="ground_truth", resize_pred="nearest",
                       log_steps=2000),
        stage1=dict(batch_size=1024, total_epochs=200, lr=1e-3, wd=1e-5),
        stage2=dict(batch_size=512, total_epochs=50)),
    "colorization": dict(
        dataset="imagenet2012", train_split="train[4096:]",
        val_split="train[:4096]",
        pp=("decode|inception_box|crop_box(key='image')|randu('fliplr')|"
            f"det_fliplr(key='image')|resize({RES})|copy('image', 'labels')|"
            "rgb_to_grayscale_to_rgb|value_range(-1, 1)|"
            "value_range(-1, 1, key='labels')|keep('image', 'labels')"),
        pp_eval=_COLOR_EVAL_PP,
        task=dict(name="colorization"),
        evals=dict(
            colorization_train=dict(split="train[4096:8192]"),
            colorization_holdout=dict(split="train[:4096]"),
            colorization_val=dict(split="validation")),
        eval_args=dict(type="colorization", log_steps=2500),
        stage1=dict(batch_size=1024, total_epochs=100, lr=4e-4, wd=4e-5),
        stage2=dict(batch_size=512, total_epochs=50)),
}


def _common(task, stage):
  """Input, optimizer, logging and task evaluators shared by both stages."""
  t = _TASKS[task]
  # One field for all data dirs (None: $TFDS_DATA_DIR), one for the
  # evaluators' extra files: overriding any of their uses sets them all.
  data_dir = ml_collections.config_dict.placeholder(str)
  config = ml_collections.ConfigDict()
  config.seed = 0
  # A checkpoint step directory to start from: --config.model_init=DIR.
  config.model_init = ml_collections.config_dict.placeholder(str)
  config.input = dict(
      data=dict(name=t["dataset"], split=t["train_split"], data_dir=data_dir),
      pp=t["pp"], batch_size=t[stage]["batch_size"],
      shuffle_buffer_size=25_000 if stage == "stage1" else 50_000)
  config.task = t["task"]
  config.total_epochs = t[stage]["total_epochs"]
  config.log_training_steps = 50
  config.checkpoint_steps = 1000
  config.keep_checkpoint_steps = 20_000 if stage == "stage1" else 5000

  config.optax_name = "scale_by_adafactor"
  config.optax = dict(beta2_cap=0.95)
  config.schedule = dict(decay_type="cosine", warmup_steps=4000)
  config.mesh = [("data", -1)]

  extra = {}
  if task == "panoptic":
    extra["categories"] = ml_collections.FieldReference(COCO_CATEGORIES)
  if task == "colorization":
    extra["inception_weights"] = ml_collections.config_dict.placeholder(str)
  config.evals = {}
  for name, split in t["evals"].items():
    config.evals[name] = dict(
        **t["eval_args"], **extra, pred="predict",
        data=dict(name=t["dataset"], split=split["split"], data_dir=data_dir),
        pp=t.get("pp_task_eval", t["pp_eval"]),
        batch_size=t[stage]["batch_size"])
  return config


def _stage1(task):
  t = _TASKS[task]
  config = _common(task, "stage1")
  config.trainer = "uvim_stage1"
  config.model = dict(_STAGE1_MODEL)
  config.lr = t["stage1"]["lr"]
  config.wd = t["stage1"]["wd"]
  config.grad_clip_norm = 1.0
  # big_vision trains the paper's stage I without a commitment loss.
  config.w_commitment = 0.0
  config.freeze_dict = False
  config.evals.codebook = dict(
      type="codebook", pred="code", dict_size=config.model.dict_size,
      data=dict(name=t["dataset"], split=t["val_split"],
                data_dir=config.input.data.get_ref("data_dir")),
      pp=t["pp_eval"], batch_size=config.input.batch_size, log_steps=250)
  return config


def _stage2(task):
  t = _TASKS[task]
  config = _common(task, "stage2")
  config.trainer = "uvim_stage2"
  # The frozen stage-I model and its checkpoint: a uvimx step directory or
  # big_vision's released .npz of this task.
  config.oracle = dict(model=dict(_STAGE1_MODEL),
                       checkpoint=ml_collections.config_dict.placeholder(str))
  config.model = dict(_LM_MODEL, patches=dict(size=(PATCH, PATCH)),
                      input_size=(RES, RES))
  config.model.seq_len = config.oracle.model.get_ref("code_len")
  config.model.vocab_size = config.oracle.model.get_ref("dict_size") + 1
  # big_vision's "howto-i21k-L/16", the ImageNet-21k ViT-L/16 of "How to
  # train your ViT" (gs://vit_models/augreg/L_16-i21k-300ep-lr_0.001-
  # aug_strong1-wd_0.1-do_0.0-sd_0.0.npz). The stage-II trainer fixes its
  # older layout and resamples its 14x14 position embeddings to the LM's
  # 32x32 grid, as big_vision's `vit.load`.
  config.encoder_init = ml_collections.config_dict.placeholder(str)
  config.lr = 1e-3
  config.wd = 1e-6
  config.lr_mults = list(PRETRAINED_ENCODER_LR_MULTS)
  # Greedy decoding for the metrics (big_vision samples at T = 1e-7).
  config.sampling = dict(temperature=0.0)
  config.evals.val = dict(
      type="mean", pred="code_loss",
      data=dict(name=t["dataset"], split=t["val_split"],
                data_dir=config.input.data.get_ref("data_dir")),
      pp=t["pp_eval"], batch_size=config.input.batch_size, log_steps=1000)
  return config


def get_config(arg="panoptic_stage1"):
  """Returns the config of variant `arg` (see the module docstring)."""
  task, _, stage = arg.partition("_")
  if task not in _TASKS or stage not in ("stage1", "stage2"):
    raise ValueError(f"Unknown variant {arg!r}: use {{panoptic, depth, "
                     "colorization}_{stage1, stage2}.")
  return _stage1(task) if stage == "stage1" else _stage2(task)
