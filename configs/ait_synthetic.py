r"""AiT (Ning et al., 2023) on synthetic_scenes/64x64: tokenizers and LMs.

Variants:

  depth_tokenizer         AiT's label-only conv VQ-VAE on depth maps, with
                          mask augmentation (ratio 0.5), evaluated by the
                          RMSE of its reconstructions on the validation split.
  depth_tokenizer_nomask  the same without mask augmentation (ratio 0): the
                          baseline of AiT's Table 11.
  smoke                   depth_tokenizer with a tiny model for a few steps
                          on synthetic_scenes/tiny (seconds; used by tests).
  mask_tokenizer          AiT's instance-mask tokenizer: the same VQ-VAE on
                          each thing's binary mask, cropped to its box and
                          resized to 64x64 (pp `instance_objects`), coded
                          into 4x4 = 16 tokens; evaluated by the IoU of the
                          reconstructed masks (`val/mask_iou`).
  mask_tokenizer_smoke    mask_tokenizer with a tiny model for a few steps
                          on synthetic_scenes/tiny (seconds; used by tests).

  The LMs (trainer `ait`) need the tokenizers' checkpoints,
  --config.tasks.{depth,instances}.tokenizer.checkpoint=WORKDIR/checkpoints/N:

  depth_lm                the autoregressive LM of the depth tokens; its
                          evaluators `depth` (soft tokens in the LM and the
                          detokenizer, tau 0.8) and `depth_hard` (none).
  depth_lm_aux            + AiT's auxiliary loss (SILog through the frozen
                          detokenizer, weight 1).
  depth_lm_parallel       AiT-P: a learned parallel token at every position,
                          one forward pass.
  depth_lm_parallel_aux   AiT-P + the auxiliary loss.
  instances_lm            instance segmentation as box, class and mask token
                          sequences; COCO box and mask AP.
  joint_lm                one LM for depth and instances, half of every
                          batch each, as many steps as both alone.
  lm_smoke                joint_lm, tiny, a few steps on synthetic_scenes/tiny.

  python train.py --config configs/ait_synthetic.py:depth_tokenizer \
      --workdir DIR

Sizes. AiT codes a 480x480 NYU depth map with downsample 32 into 15x15 = 225
codes. At 64x64 that downsample would leave 2x2 codes of half the scene
each, and 16 would leave 4x4 codes of 16x16 pixels, coarser than most of the
scenes' objects; downsample 8, the smallest of AiT's ablation (Table 7),
gives 8x8 = 64 codes of 8x8 pixels, still a short sequence for the stage-II
LM. Mask patches of 4 pixels are, as AiT's 16 to its 32-pixel codes, half a
code's side: a masked patch hides part of a code's area, which the encoder
must fill in from the rest; 0.5 of the 16x16 = 256 patches, 128, are masked.
The encoder then has AiT's widths 16, 32, 64 and its 2 residual blocks and
512-dimensional codebook of 128 codes.

Codebook: AiT's EMA codebook alone collapses here: after 250 steps 2 of the
128 codes were in use (perplexity 1.9, val RMSE 0.65 m). With Jukebox's
random restarts of codes whose EMA count falls below 1 (a use per batch),
84% were (perplexity 85, val RMSE 0.40 m), so the configs restart.

Training: AiT's Adam at 3e-4, batch 8, 20 epochs with exponential decay on
NYU. Here batch 32 for 1500 steps (4.8 epochs of the 10k training maps) at
1e-3 with cosine decay: about 6 steps/s on 2 CPU cores, 4-5 minutes.
synthetic_scenes' depth is measured everywhere, so the mask augmentation
here only regularises; NYU's holes are what it is for.

Instance masks, as AiT's (vae/configs/insseg): 64x64 masks, downsample 16
(4 stride-2 layers, widths 16 to 128, 2 residual blocks), 16 codes of 512
dimensions from 128, inputs and outputs in [-1, 1] and the MSE loss there,
no mask augmentation (masks are complete) and no flip (AiT has none). The
pp op keeps up to 8 objects per image (synthetic_scenes has at most 8, 4.7
on average), the trainer weighs only the valid ones (loss, EMA codebook,
restarts, metrics). AiT trains on 512 masks a step for 20 epochs of COCO;
this model costs about 0.4 GFLOP per mask and step, so on 2 CPU cores a
step of 16 images takes their first 80 object slots, valid ones first
(`objects_per_batch`; 76 objects on average, so few are left out), not all
128 with 52 padding: 600 steps (45k objects, about one epoch of the 47k
training objects) ran at 2.4 steps/s in 4.8 minutes (about 1.3 steps/s when
other jobs share the cores). Adam at 1e-3 with cosine decay, as for depth.
Codebook: without restarts the EMA codebook collapsed to 3 codes within 50
steps (perplexity 2-3, val mask IoU 0.86 at step 300); with the same Jukebox
restarts as depth, 97% of the codes are used per batch (perplexity 93) and
the val mask IoU is 0.965.
"""
import ml_collections

_RES = 64
_MAX_DEPTH = 10.0  # synthetic_scenes depths lie in 0.8-8.6 m.
_PP = (f"decode_depth_png|resize({_RES}, key='depth', method='nearest')|"
       "{augment}keep('depth')")
# AiT flips its VQ-VAE's training maps left-right; no crops (full maps).
_FLIP = "randu('fliplr')|det_fliplr(key='depth')|"


# Instance masks: up to _MAX_INSTANCES things per image, each cropped to its
# box and resized to _MASK x _MASK.
_MAX_INSTANCES = 8
_MASK = 64
_NUM_THINGS = 4  # synthetic_scenes' thing classes (class ids 0-3).
_OBJECTS = (f"instance_objects(max_instances={_MAX_INSTANCES}, "
            f"mask_size={_MASK}, num_things={_NUM_THINGS})|")
_MASK_PP = _OBJECTS + "keep('masks', 'classes')"
# Features the mask pipes never read stay encoded (smaller cache, no
# decoding); semantics and instances are decoded by TFDS.
_MASK_SKIP_DECODE = ("image", "depth", "normals", "boundaries",
                     "panoptic_image")
_LM_VARIANTS = ("depth_lm", "depth_lm_aux", "depth_lm_parallel",
                "depth_lm_parallel_aux", "instances_lm", "joint_lm",
                "lm_smoke")
_VARIANTS = ("depth_tokenizer", "depth_tokenizer_nomask", "smoke",
             "mask_tokenizer", "mask_tokenizer_smoke") + _LM_VARIANTS


def _model(smoke, downsample=8, size=_RES):
  if smoke:
    return dict(input_size=(size, size), downsample=downsample, width=4,
                num_res_blocks=0, code_dim=8, num_codes=16,
                restart_threshold=1.0)
  return dict(input_size=(size, size), downsample=downsample, width=16,
              num_res_blocks=2, code_dim=512, num_codes=128,
              restart_threshold=1.0)


def get_config(arg="depth_tokenizer"):
  """Returns the config of variant `arg` (see the module docstring)."""
  if arg not in _VARIANTS:
    raise ValueError(f"Unknown variant {arg!r}: use one of "
                     f"{', '.join(_VARIANTS)}.")
  if arg.startswith("mask_tokenizer"):
    return _mask_config(smoke=arg.endswith("smoke"))
  if arg in _LM_VARIANTS:
    return _lm_config(arg)
  mask_ratios = {"depth_tokenizer": 0.5, "depth_tokenizer_nomask": 0.0,
                 "smoke": 0.5}
  smoke = arg == "smoke"
  data = "synthetic_scenes/tiny" if smoke else "synthetic_scenes/64x64"
  # One field for the train and eval data: None means $TFDS_DATA_DIR.
  data_dir = ml_collections.config_dict.placeholder(str)

  config = ml_collections.ConfigDict()
  config.seed = 0
  # A checkpoint step directory to start from: --config.model_init=DIR.
  config.model_init = ml_collections.config_dict.placeholder(str)
  config.trainer = "vqvae"
  config.input = dict(
      data=dict(name=data, split="train", data_dir=data_dir),
      pp=_PP.format(augment=_FLIP), batch_size=8 if smoke else 32,
      shuffle_buffer_size=48 if smoke else 10_000, cache_raw=True)
  config.model = _model(smoke)
  config.task = dict(name="depth", max_depth=_MAX_DEPTH)
  config.w_commitment = 0.25
  config.mask_ratio = mask_ratios[arg]
  config.mask_patch = 4

  config.total_steps = 4 if smoke else 1500
  config.log_training_steps = 2 if smoke else 100
  config.checkpoint_steps = 2 if smoke else 500
  config.keep_checkpoint_steps = (
      ml_collections.config_dict.placeholder(int) if smoke else 1000)

  config.optax_name = "scale_by_adam"
  config.lr = 1e-3
  config.schedule = dict(warmup_steps=1 if smoke else 100,
                         decay_type="cosine")
  config.mesh = [("data", -1)]

  config.evals = dict(val=dict(
      type="depth", pred="reconstruct", min_depth=1e-3, max_depth=16.0,
      data=dict(name=data, split="validation", data_dir=data_dir),
      pp=_PP.format(augment=""), batch_size=8 if smoke else 200,
      log_steps=2 if smoke else 500))  # And the last step.
  return config


def _mask_config(smoke):
  """The instance-mask tokenizer (see the module docstring)."""
  data = "synthetic_scenes/tiny" if smoke else "synthetic_scenes/64x64"
  data_dir = ml_collections.config_dict.placeholder(str)

  config = ml_collections.ConfigDict()
  config.seed = 0
  # A checkpoint step directory to start from: --config.model_init=DIR.
  config.model_init = ml_collections.config_dict.placeholder(str)
  config.trainer = "vqvae"
  batch_size = 8 if smoke else 16
  config.input = dict(
      data=dict(name=data, split="train", data_dir=data_dir),
      pp=_MASK_PP, batch_size=batch_size,
      shuffle_buffer_size=48 if smoke else 10_000, cache_raw=True,
      skip_decode=_MASK_SKIP_DECODE)
  config.model = _model(smoke, downsample=16, size=_MASK)
  config.task = dict(name="instance_masks", max_instances=_MAX_INSTANCES)
  config.w_commitment = 0.25
  config.mask_ratio = 0.0
  # 5 of the 8 slots per image: synthetic_scenes has 4.7 things on average.
  config.objects_per_batch = 5 * batch_size

  config.total_steps = 4 if smoke else 600
  config.log_training_steps = 2 if smoke else 50
  config.checkpoint_steps = 2 if smoke else 300
  config.keep_checkpoint_steps = ml_collections.config_dict.placeholder(int)

  config.optax_name = "scale_by_adam"
  config.lr = 1e-3
  config.schedule = dict(warmup_steps=1 if smoke else 50,
                         decay_type="cosine")
  config.mesh = [("data", -1)]

  config.evals = dict(val=dict(
      type="mean", pred="mask_iou",
      data=dict(name=data, split="validation", data_dir=data_dir),
      pp=_MASK_PP, batch_size=8 if smoke else 200,
      log_steps=2 if smoke else 300))  # And the last step.
  return config


# The LM: UViM's synthetic stage-II size (ViT encoder and decoder of 4
# layers, width 128, 8x8 patches) on the 64x64 images. Per task, the pp ops
# that make its labels, and the keys of its training and eval batches.
_LM_IMAGE_PP = f"decode|resize({_RES})|value_range(-1, 1)|"
_LM_TASK_PP = {
    "depth": (f"decode_depth_png|resize({_RES}, key='depth', "
              "method='nearest')|"),
    "instances": _OBJECTS}
_LM_TRAIN_KEYS = {"depth": ("depth",),
                  "instances": ("boxes", "classes", "masks")}
# The instance evaluator reads the maps; the objects serve the ceiling of
# benchmarks/ait_quality.py (ground-truth sequences).
_LM_EVAL_KEYS = {"depth": ("depth",),
                 "instances": ("boxes", "classes", "masks", "instances",
                               "semantics")}
_LM_STEPS = {"depth": 1000, "instances": 1000}


def _lm_pp(names, keys):
  """The pp of the tasks `names`, keeping the image and their `keys`."""
  kept = ("image",) + sum((keys[n] for n in names), ())
  return (_LM_IMAGE_PP + "".join(_LM_TASK_PP[n] for n in names)
          + f"keep{kept}")


def _tokenizer(tokenizer_config):
  """An LM task's tokenizer: the run of `tokenizer_config`, at a flag."""
  return dict(kind="conv_vqvae", model=tokenizer_config.model,
              task=tokenizer_config.task,
              checkpoint=ml_collections.config_dict.placeholder(str))


def _lm_tasks(names, smoke, aux):
  """config.tasks of the AiT LM; the tokenizers' checkpoints are flags."""
  tasks = {}
  if "depth" in names:
    tasks["depth"] = dict(
        type="codes",
        tokenizer=_tokenizer(
            get_config("smoke" if smoke else "depth_tokenizer")),
        # AiT's auxiliary loss at its depth weight 1, but with uvimx's SILog
        # (lambda 0.85, x10: about 6x AiT's lambda 0.5 unscaled one).
        aux_weight=1.0 if aux else 0.0, aux_tau=0.8,
        # Greedy; soft tokens into the LM and the detokenizer (tau 0.8):
        # AiT's inference. The predict fn depth_hard has neither.
        sampling=dict(temperature=0.0, soft_tokens=True, soft_decode=True,
                      tau=0.8))
  if "instances" in names:
    tasks["instances"] = dict(
        type="instances",
        tokenizer=_tokenizer(_mask_config(smoke)),
        # Box coordinates at the 65 pixel edges of the 64x64 images.
        sequence=dict(num_bins=_RES + 1, num_classes=_NUM_THINGS,
                      max_instances=_MAX_INSTANCES, mask_weight=0.2),
        # AiT's dice + MSE auxiliary loss, weight 5.
        aux_weight=5.0 if aux else 0.0, aux_tau=1.0,
        # Pix2Seq's nucleus sampling (top-p 0.4) of every token.
        sampling=dict(temperature=1.0, top_p=0.4, soft_tokens=False,
                      soft_decode=True, tau=1.0))
  mix = 1.0 / len(tasks)
  for task in tasks.values():
    task["mix"] = mix
  return tasks


def _lm_config(variant):
  """The AiT LM variants (see the module docstring)."""
  smoke = variant == "lm_smoke"
  names = {"instances_lm": ("instances",), "joint_lm": ("depth", "instances"),
           "lm_smoke": ("depth", "instances")}.get(variant, ("depth",))
  data = "synthetic_scenes/tiny" if smoke else "synthetic_scenes/64x64"
  data_dir = ml_collections.config_dict.placeholder(str)

  config = ml_collections.ConfigDict()
  config.seed = 0
  # A checkpoint step directory to start from: --config.model_init=DIR.
  config.model_init = ml_collections.config_dict.placeholder(str)
  config.trainer = "ait"
  config.input = dict(
      data=dict(name=data, split="train", data_dir=data_dir),
      pp=_lm_pp(names, _LM_TRAIN_KEYS), batch_size=8 if smoke else 32,
      shuffle_buffer_size=48 if smoke else 10_000, cache_raw=True)
  config.tasks = _lm_tasks(names, smoke, aux=variant.endswith("_aux"))
  config.model = dict(
      patches=dict(size=(8, 8)), input_size=(_RES, _RES),
      num_layers=1 if smoke else 4, num_heads=2 if smoke else 4,
      mlp_dim=64 if smoke else 512, emb_dim=32 if smoke else 128,
      posemb_type="learn", parallel="parallel" in variant)

  config.total_steps = 4 if smoke else sum(_LM_STEPS[n] for n in names)
  config.log_training_steps = 2 if smoke else 100
  config.checkpoint_steps = 2 if smoke else 500
  config.keep_checkpoint_steps = ml_collections.config_dict.placeholder(int)
  # UViM's synthetic stage-II optimiser.
  config.optax_name = "scale_by_adafactor"
  config.optax = dict(beta2_cap=0.95)
  config.lr = 1e-3
  config.wd = 1e-4
  config.schedule = dict(warmup_steps=2 if smoke else 200,
                         decay_type="cosine")
  config.grad_clip_norm = 1.0
  config.mesh = [("data", -1)]

  config.evals = {}
  evaluators = {"depth": dict(type="depth", min_depth=1e-3, max_depth=16.0),
                "instances": dict(type="instances", num_things=_NUM_THINGS)}
  preds = {"depth": ("depth", "depth_hard"), "instances": ("instances",)}
  for name in names:
    for pred in preds[name]:
      config.evals[pred] = dict(
          **evaluators[name], pred=pred,
          data=dict(name=data, split="validation", data_dir=data_dir),
          pp=_lm_pp((name,), _LM_EVAL_KEYS), batch_size=8 if smoke else 200,
          log_steps=0)  # Only at the end.
  return config
