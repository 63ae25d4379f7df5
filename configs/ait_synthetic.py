r"""AiT (Ning et al., 2023) on synthetic_scenes/64x64: the depth tokenizer.

Variants:

  depth_tokenizer         AiT's label-only conv VQ-VAE on depth maps, with
                          mask augmentation (ratio 0.5), evaluated by the
                          RMSE of its reconstructions on the validation split.
  depth_tokenizer_nomask  the same without mask augmentation (ratio 0): the
                          baseline of AiT's Table 11.
  smoke                   depth_tokenizer with a tiny model for a few steps
                          on synthetic_scenes/tiny (seconds; used by tests).

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
"""
import ml_collections

_RES = 64
_MAX_DEPTH = 10.0  # synthetic_scenes depths lie in 0.8-8.6 m.
_PP = (f"decode_depth_png|resize({_RES}, key='depth', method='nearest')|"
       "{augment}keep('depth')")
# AiT flips its VQ-VAE's training maps left-right; no crops (full maps).
_FLIP = "randu('fliplr')|det_fliplr(key='depth')|"


def _model(smoke):
  if smoke:
    return dict(input_size=(_RES, _RES), downsample=8, width=4,
                num_res_blocks=0, code_dim=8, num_codes=16,
                restart_threshold=1.0)
  return dict(input_size=(_RES, _RES), downsample=8, width=16,
              num_res_blocks=2, code_dim=512, num_codes=128,
              restart_threshold=1.0)


def get_config(arg="depth_tokenizer"):
  """Returns the config of variant `arg` (see the module docstring)."""
  mask_ratios = {"depth_tokenizer": 0.5, "depth_tokenizer_nomask": 0.0,
                 "smoke": 0.5}
  if arg not in mask_ratios:
    raise ValueError(f"Unknown variant {arg!r}: use depth_tokenizer, "
                     "depth_tokenizer_nomask or smoke.")
  smoke = arg == "smoke"
  data = "synthetic_scenes/tiny" if smoke else "synthetic_scenes/64x64"
  # One field for the train and eval data: None means $TFDS_DATA_DIR.
  data_dir = ml_collections.config_dict.placeholder(str)

  config = ml_collections.ConfigDict()
  config.seed = 0
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
  config.keep_checkpoint_steps = None if smoke else 1000

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
