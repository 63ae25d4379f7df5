r"""Fixed UViM shapes for timing train steps against big_vision's UViM.

Variants:

  s1  stage-I train step: oracle + base model on 128x128 panoptic labels
      (9 classes, 17 instance channels), patch 8, code of 64 words from a
      512-word dictionary, width 256, 4 + 4 blocks, both image contexts,
      bottleneck resize, random code dropout, dictionary learning on.
  s2  stage-II train step: the LM (ViT encoder + decoder, 4 layers each,
      width 256, patch 8 on 128x128) learning the 64-token code (vocabulary
      513) of the s1 model, which runs frozen in the step.

Both use batch 32 and big_vision's Adafactor. The shapes are fixed so that
steps/s and FLOP utilisation compare with big_vision's UViM code on the same
model; the benchmark feeds random in-memory batches, the input below is only
for completeness (train.py would read synthetic_scenes/128x128).

  python -m benchmarks.train_step --config configs/bench_uvim.py:s1
  python -m benchmarks.train_step --config configs/bench_uvim.py:s2
"""
import ml_collections

from configs import uvim_paper

_RES = 128
_PATCH = (8, 8)

_STAGE1_MODEL = dict(
    input_size=(_RES, _RES), patch_size=_PATCH, code_len=64, width=256,
    enc_depth=4, dec_depth=4, mlp_dim=1024, num_heads=4, dict_size=512,
    codeword_dim=256, with_encoder_ctx=True, with_decoder_ctx=True,
    code_dropout="random", bottleneck_resize=True)


def _common():
  config = ml_collections.ConfigDict()
  config.seed = 0
  # A checkpoint step directory to start from: --config.model_init=DIR.
  config.model_init = ml_collections.config_dict.placeholder(str)
  config.input = dict(
      data=dict(name="synthetic_scenes/128x128", split="train",
                data_dir=ml_collections.config_dict.placeholder(str)),
      pp=("decode|coco_panoptic|make_canonical|"
          "concat(['semantics', 'instances'], 'labels')|"
          "value_range(-1, 1)|keep('image', 'labels')"),
      batch_size=32, shuffle_buffer_size=10_000)
  # The benchmark's fixed shapes, inputs = outputs = {semantics: (9, 64),
  # instances: (17, 64)}, rather than synthetic_scenes' own (10, 16): a
  # label beyond the channels is only left out of the inputs and the loss.
  config.task = dict(name="panoptic", num_classes=9, max_instances=17)
  config.total_steps = 10_000
  config.optax_name = "scale_by_adafactor"
  config.optax = dict(beta2_cap=0.95)
  config.wd = 1e-5
  config.schedule = dict(warmup_steps=1_000, decay_type="cosine")
  config.grad_clip_norm = 1.0
  config.mesh = [("data", -1)]
  return config


def get_config(arg="s1"):
  """Returns the config of variant `arg`: "s1" or "s2"."""
  config = _common()
  if arg == "s1":
    config.trainer = "uvim_stage1"
    config.model = dict(_STAGE1_MODEL)
    config.lr = 1e-3
    config.w_commitment = 0.25
    config.freeze_dict = False
  elif arg == "s2":
    config.trainer = "uvim_stage2"
    config.oracle = dict(
        model=dict(_STAGE1_MODEL),
        checkpoint=ml_collections.config_dict.placeholder(str))
    config.model = dict(
        patches=dict(size=_PATCH), input_size=(_RES, _RES), num_layers=4,
        num_heads=4, mlp_dim=1024, emb_dim=256,
        seq_len=_STAGE1_MODEL["code_len"],
        vocab_size=_STAGE1_MODEL["dict_size"] + 1, posemb_type="learn")
    config.lr = 1e-3
    # As the paper's stage II: a (nominally pre-trained) encoder at 0.1x.
    config.lr_mults = list(uvim_paper.PRETRAINED_ENCODER_LR_MULTS)
  else:
    raise ValueError(f"Unknown variant {arg!r}: use 's1' or 's2'.")
  return config
