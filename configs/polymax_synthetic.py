r"""PolyMaX cluster head and its per-pixel baseline on synthetic_scenes/64x64.

Variants:

  semseg, depth, normals     the cluster head: a small ResNet, kMaX's pixel
                             decoder, 2+2+2 k-means decoder layers at strides
                             32, 16, 8; K = 9 classes (semseg) or 16 clusters.
  perpixel_{semseg,depth,normals}  the same encoder and pixel decoder with a
                             1x1 conv head: the paper's per-pixel baseline,
                             trained with the same losses (for depth, the
                             paper's baseline needed Charbonnier instead).
  smoke                      depth, tiny, a few steps on synthetic_scenes/tiny
                             (seconds; used by the tests).

  python train.py --config configs/polymax_synthetic.py:depth --workdir DIR
"""
import ml_collections

from configs import synthetic_baseline

_RES = 64
_RESIZE = "resize({res})|resize({res}, key='{label}', method='nearest')|"

# Per task: label decoding, the task, its loss terms and its evaluator. No
# augmentation, like the other synthetic configs (short runs underfit).
_TASKS = {
    "semseg": dict(
        decode="decode|", label="semantics",
        finish="|cast('int32', key='semantics')",
        task=dict(name="semseg", num_classes=9, ignore_label=255),
        # kMaX trains semantic masks with cross-entropy and dice.
        loss=dict(xent=1.0, dice=1.0),
        eval=dict(type="semseg", num_classes=9,
                  class_names=synthetic_baseline.CLASS_NAMES)),
    "depth": dict(
        decode="decode|decode_depth_png|", label="depth", finish="",
        task=dict(name="depth", min_depth=0.0, max_depth=10.0),
        # PolyMaX on NYU: SILog + relative squared error + MegaDepth's
        # gradient matching (Charbonnier is its Taskonomy alternative).
        loss=dict(silog=1.0, relative_squared_error=1.0,
                  gradient_matching=1.0),
        eval=dict(type="depth", min_depth=1e-3, max_depth=16.0)),
    "normals": dict(
        decode="decode|decode_normals_png|", label="normals", finish="",
        task=dict(name="normals"),
        # PolyMaX: plain L2, more stable than an angular loss.
        loss=dict(normals_l2=1.0),
        eval=dict(type="normals")),
}


def _pp(task):
  t = _TASKS[task]
  return (t["decode"] + _RESIZE.format(label=t["label"], res=_RES) +
          "value_range(-1, 1)" + t["finish"] +
          f"|keep('image', '{t['label']}')")


def _model(smoke, per_pixel, task):
  if smoke:
    model = dict(backbone_kwargs=dict(widths=(8, 8, 16, 16),
                                      depths=(1, 1, 1, 1)),
                 decoder_width=8, embedding_dim=8, transformer_width=16,
                 layers_per_stage=(1, 0, 1), num_heads=2)
  else:
    model = dict(backbone_kwargs=dict(widths=(32, 64, 128, 256),
                                      depths=(1, 1, 1, 1)),
                 decoder_width=(128, 96, 64, 48), embedding_dim=64,
                 transformer_width=128, layers_per_stage=(2, 2, 2),
                 num_heads=4)
  model.update(input_size=(_RES, _RES), backbone="resnet",
               per_pixel=per_pixel)
  if task != "semseg" and not per_pixel:
    model["num_clusters"] = 4 if smoke else 16
  return model


def get_config(arg="depth"):
  """Returns the config of variant `arg` (see the module docstring)."""
  per_pixel = arg.startswith("perpixel_")
  task = arg.removeprefix("perpixel_")
  smoke = arg == "smoke"
  if smoke:
    task = "depth"
  elif task not in _TASKS:
    raise ValueError(f"Unknown variant {arg!r}: use semseg, depth, normals, "
                     "perpixel_semseg, perpixel_depth, perpixel_normals or "
                     "smoke.")
  data = "synthetic_scenes/tiny" if smoke else "synthetic_scenes/64x64"
  data_dir = ml_collections.config_dict.placeholder(str)

  config = ml_collections.ConfigDict()
  config.seed = 0
  # A checkpoint step directory to start from: --config.model_init=DIR.
  config.model_init = ml_collections.config_dict.placeholder(str)
  config.trainer = "cluster_head"
  config.input = dict(
      data=dict(name=data, split="train", data_dir=data_dir),
      pp=_pp(task), batch_size=8 if smoke else 32,
      shuffle_buffer_size=48 if smoke else 10_000, cache_raw=True)
  config.model = _model(smoke, per_pixel, task)
  config.task = _TASKS[task]["task"]
  config.loss = _TASKS[task]["loss"]
  config.aux_weight = 1.0

  config.total_steps = 4 if smoke else 3000
  config.log_training_steps = 2 if smoke else 100
  config.checkpoint_steps = 2 if smoke else 500
  config.keep_checkpoint_steps = (
      ml_collections.config_dict.placeholder(int) if smoke else 1000)

  # PolyMaX: AdamW at 5e-4 (pre-training), weight decay 0.05. uvimx's wd is
  # big_vision's, not multiplied by the learning rate (see uvimx/optim.py),
  # so AdamW's decay is lr x 0.05 here (0.05 itself shrinks the kernels by 5%
  # a step: the models then learn nothing). A reference, so that
  # --config.lr=5e-5 (fine-tuning) scales the decay with it.
  config.optax_name = "scale_by_adam"
  config.lr = 5e-4
  config.wd = config.get_ref("lr") * 0.05
  config.schedule = dict(warmup_steps=1 if smoke else 200,
                         decay_type="cosine")
  config.grad_clip_norm = 1.0
  config.mesh = [("data", -1)]

  config.evals = dict(val=dict(
      **_TASKS[task]["eval"], pred="predict",
      data=dict(name=data, split="validation", data_dir=data_dir),
      pp=_pp(task), batch_size=8 if smoke else 200,
      log_steps=2 if smoke else 1000))
  return config
