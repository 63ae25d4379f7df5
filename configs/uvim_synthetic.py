r"""UViM on synthetic_scenes/64x64: stage I (oracle + base model), stage II (LM).

Variants, `{task}_{what}` with task panoptic, depth or colorization:

  {task}_stage1     the restricted oracle and base model, joined by a code of
                    64 words from a 1024-word dictionary (panoptic) or 16
                    from a 128-word one.
  {task}_base_only  the same model with an all-zero code (zero_decoder_seq):
                    UViM's "base model only" ablation.
  {task}_stage2     the LM predicting the stage-I code from the image; needs
                    --config.oracle.checkpoint=STAGE1_WORKDIR/checkpoints/N.
  panoptic_stage2_nonar  the LM without autoregression (all code positions
                    in one pass), the paper's "no Autoreg." ablation.
  {task}_stage2_from_base  the LM with its encoder started as the stage-I
                    base model (an in-domain pre-trained ViT; UViM starts it
                    from ImageNet-21k), learning 10x slower.
  panoptic_stage2_nonar_from_base  the non-autoregressive LM, so started.
  smoke_stage1, smoke_stage2  panoptic, tiny models, a few steps on
                    synthetic_scenes/tiny (seconds; used by the tests).

  python train.py --config configs/uvim_synthetic.py:panoptic_stage1 \
      --workdir /tmp/s1
  python train.py --config configs/uvim_synthetic.py:panoptic_stage2 \
      --config.oracle.checkpoint=/tmp/s1/checkpoints/2000 --workdir /tmp/s2
"""
import ml_collections

from configs import uvim_paper

_RES = 64
_PATCH = (8, 8)
_NUM_CLASSES = 9  # synthetic_scenes: 4 things, then 5 stuff classes.
# Training steps of 32 images per task, (stage I, stage II): the twelve runs
# of benchmarks/uvim_quality.py must fit in a few hours of 2 CPU cores.
# Panoptic, the paper's main task, gets the most (6.4 epochs of stage I). The
# LMs get 3000: depth's code, after 1000, still lost to the zero code (RMSE
# 0.93 vs 0.85 m); for panoptic's see _DICT.
_STEPS = {"panoptic": (2000, 3000), "depth": (1000, 3000),
          "colorization": (1000, 1000)}
# Code words per image. Panoptic gets a word per 8x8 patch: with 16 (one per
# 2x2 patches, 112 bits for 8 segments) the oracle's code lost almost every
# thing under 100 pixels, 46% of the things (stage I PQ 48.1, things 14.5;
# with 64: 57.5 and 29.0, from a 128-word dictionary).
_CODE_LEN = {"panoptic": 64, "depth": 16, "colorization": 16}
# Dictionary size and EMA momentum per task. Panoptic's 1024 words lift stage
# I from 57.5 to 63.9 PQ (things 29.0 -> 38.3). They need the faster momentum:
# at 0.995 a dead word's discounted count stays above LBG's min_count for
# ~1000 steps, and half the words were still unused after 2000 (PQ 61.4). Its
# LM, over 1025 tokens, needs 3000 steps to beat the non-autoregressive one
# (after 2000: 38.6 vs 39.9 PQ). The README's Results list these runs.
_DICT = {"panoptic": (1024, 0.95), "depth": (128, 0.995),
         "colorization": (128, 0.995)}

# Per task: the pp that makes (image, label), the task and its evaluator.
# The images are already 64x64: the resizes only give the pipeline its static
# shapes. No augmentation: the models underfit in these short runs.
# Panoptic: semantic ids are class + 1 (0 void); at most 8 things and 5 stuff
# segments, so 16 instance channels (0 void) hold every scene. Colorization:
# the image is the grayscale input, the label its colour version.
_TASKS = {
    "panoptic": dict(
        pp=("decode|coco_panoptic|make_canonical|"
            "concat(['semantics', 'instances'], 'labels')|"
            f"resize({_RES})|resize({_RES}, key='labels', method='nearest')|"
            "value_range(-1, 1)|keep('image', 'labels')"),
        # min_fraction 0, big_vision's: no segment is too small to keep.
        task=dict(name="panoptic", num_classes=_NUM_CLASSES + 1,
                  max_instances=16, min_fraction=0.0),
        eval=dict(type="panoptic", categories="synthetic_scenes")),
    "depth": dict(
        pp=("decode|decode_depth_png|"
            f"resize({_RES})|resize({_RES}, key='depth', method='nearest')|"
            "value_range(-1, 1)|keep('image', 'depth')"),
        # 128 bins (7.8 cm) rather than UViM's 256: the oracle's one-hot
        # input and the base model's output have num_bins x 64 values per
        # patch, the dominant cost of these small models.
        task=dict(name="depth", num_bins=128, min_depth=0.0, max_depth=10.0),
        eval=dict(type="depth", min_depth=1e-3, max_depth=16.0)),
    "colorization": dict(
        pp=(f"decode|resize({_RES})|copy('image', 'labels')|"
            "rgb_to_grayscale_to_rgb|"
            "value_range(-1, 1)|value_range(-1, 1, key='labels')|"
            "keep('image', 'labels')"),
        task=dict(name="colorization"),
        eval=dict(type="colorization")),
}


def _stage1_model(task, smoke):
  if smoke:
    return dict(input_size=(_RES, _RES), patch_size=_PATCH, code_len=4,
                width=32, enc_depth=1, dec_depth=1, mlp_dim=64, num_heads=2,
                dict_size=16, codeword_dim=8, with_encoder_ctx=True,
                with_decoder_ctx=True, code_dropout="random",
                bottleneck_resize=True)
  return dict(input_size=(_RES, _RES), patch_size=_PATCH,
              code_len=_CODE_LEN[task],
              width=128, enc_depth=4, dec_depth=4, mlp_dim=512, num_heads=4,
              dict_size=_DICT[task][0], codeword_dim=32,
              dict_momentum=_DICT[task][1],
              with_encoder_ctx=True, with_decoder_ctx=True,
              code_dropout="random", code_dropout_rate=1.0,
              bottleneck_resize=True)


def _common(task, smoke):
  """Input, optimizer, logging and mesh shared by both stages."""
  data = "synthetic_scenes/tiny" if smoke else "synthetic_scenes/64x64"
  # One field for the train and eval data: None means $TFDS_DATA_DIR.
  data_dir = ml_collections.config_dict.placeholder(str)
  config = ml_collections.ConfigDict()
  config.seed = 0
  # A checkpoint step directory to start from: --config.model_init=DIR.
  config.model_init = ml_collections.config_dict.placeholder(str)
  config.input = dict(
      data=dict(name=data, split="train", data_dir=data_dir),
      pp=_TASKS[task]["pp"], batch_size=8 if smoke else 32,
      shuffle_buffer_size=48 if smoke else 10_000, cache_raw=True)
  config.task = _TASKS[task]["task"]
  config.log_training_steps = 2 if smoke else 100
  config.checkpoint_steps = 3 if smoke else 500
  config.keep_checkpoint_steps = (
      ml_collections.config_dict.placeholder(int) if smoke else 1000)
  config.optax_name = "scale_by_adafactor"
  config.optax = dict(beta2_cap=0.95)
  config.wd = 1e-4
  config.schedule = dict(warmup_steps=2 if smoke else 200,
                         decay_type="cosine")
  config.grad_clip_norm = 1.0
  config.mesh = [("data", -1)]
  config.evals = dict(val=dict(
      **_TASKS[task]["eval"], pred="predict",
      data=dict(name=data, split="validation", data_dir=data_dir),
      pp=_TASKS[task]["pp"], batch_size=8 if smoke else 200,
      log_steps=3 if smoke else 1000))  # And the last step.
  return config


def _stage1(task, smoke, base_only=False):
  config = _common(task, smoke)
  config.trainer = "uvim_stage1"
  config.model = _stage1_model(task, smoke)
  if base_only:
    config.model.zero_decoder_seq = True
  config.total_steps = 6 if smoke else _STEPS[task][0]
  config.lr = 1e-3
  config.w_commitment = 0.25
  config.freeze_dict = False
  config.evals.codebook = dict(
      type="codebook", pred="code", dict_size=config.model.dict_size,
      data=config.evals.val.data, pp=config.evals.val.pp,
      batch_size=config.evals.val.batch_size,
      log_steps=config.evals.val.log_steps)
  return config


def _stage2(task, smoke, autoregressive=True, encoder_from_base_model=False):
  config = _common(task, smoke)
  config.trainer = "uvim_stage2"
  oracle = _stage1_model(task, smoke)
  # The frozen stage-I model: its architecture, and the checkpoint (a uvimx
  # step directory or a big_vision .npz) that the LM learns the codes of.
  config.oracle = dict(model=oracle,
                       checkpoint=ml_collections.config_dict.placeholder(str))
  config.model = dict(
      patches=dict(size=_PATCH), input_size=(_RES, _RES),
      num_layers=1 if smoke else 4, num_heads=2 if smoke else 4,
      mlp_dim=64 if smoke else 512, emb_dim=32 if smoke else 128,
      seq_len=oracle["code_len"], vocab_size=oracle["dict_size"] + 1,
      posemb_type="learn", autoregressive=autoregressive)
  config.total_steps = 6 if smoke else _STEPS[task][1]
  config.lr = 1e-3
  # The LM's encoder can start as the stage-I base model (its ViT over the
  # image; see uvimx/trainers/uvim_stage2.py), in place of UViM's ImageNet
  # ViT, and then learns 10x slower as UViM's pre-trained encoder.
  config.encoder_from_base_model = encoder_from_base_model
  if encoder_from_base_model:
    config.lr_mults = list(uvim_paper.PRETRAINED_ENCODER_LR_MULTS)
  # Greedy decoding (temperature 0) for the metrics, as UViM reports them.
  config.sampling = dict(temperature=0.0)
  if task == "colorization":
    # UViM's point for colorization: several plausible colourings per image.
    # Mean pairwise RMS distance between 4 samples at temperature 1.
    config.sampling.num_samples = 4
    config.diversity_sampling = dict(temperature=1.0)
    config.evals.diversity = dict(
        type="mean", pred="sample_diversity", data=config.evals.val.data,
        pp=config.evals.val.pp, batch_size=config.evals.val.batch_size,
        log_steps=config.evals.val.log_steps)
  return config


def get_config(arg="panoptic_stage1"):
  """Returns the config of variant `arg` (see the module docstring)."""
  task, _, what = arg.partition("_")
  smoke = task == "smoke"
  if smoke:
    task = "panoptic"
  builders = {
      "stage1": lambda: _stage1(task, smoke),
      "base_only": lambda: _stage1(task, smoke, base_only=True),
      "stage2": lambda: _stage2(task, smoke),
      "stage2_nonar": lambda: _stage2(task, smoke, autoregressive=False),
      "stage2_from_base": lambda: _stage2(task, smoke,
                                          encoder_from_base_model=True),
      "stage2_nonar_from_base": lambda: _stage2(
          task, smoke, autoregressive=False, encoder_from_base_model=True),
  }
  if task not in _TASKS or what not in builders:
    raise ValueError(
        f"Unknown variant {arg!r}: use {{panoptic, depth, colorization}}_"
        "{stage1, base_only, stage2, stage2_from_base}, "
        "panoptic_stage2_nonar[_from_base], smoke_stage1 or smoke_stage2.")
  return builders[what]()
