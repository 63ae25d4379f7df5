r"""PolyMaX on NYUD-v2 (Yang et al. 2024, Section 4): 40 classes, 480x640.

Variants: semseg, depth, normals (the cluster head, K = 40 classes or 16
clusters as the paper's Figure 8) and perpixel_{semseg,depth,normals} (the
per-pixel baseline at the same encoder). Task heads, loss terms, deep
supervision and the optimiser are those of `polymax_synthetic.py` (the
paper's); this file sets the data, the model size and the schedule.

Data: TFDS `nyuv2_labeled` (795 train / 654 test frames, see
`uvimx/datasets/nyuv2_labeled.py` for building it from the files), whole
480x640 frames (multiples of 32, no resize), random left-right flips in
training (which mirror the normals too).

  python train.py --config configs/polymax_nyu.py:depth --workdir DIR \
      --config.input.data.data_dir=TFDS_DIR

Where this differs from the paper:
- Backbone: a ResNet-50 (LayerNorm, from scratch unless `config.model_init`
  gives weights) instead of ImageNet-22k ConvNeXt-L; the paper's scaling
  study (its Fig. 7) uses a ResNet-50 as well.
- The paper pre-trains on Taskonomy at lr 5e-4 and fine-tunes on NYUD-v2 at
  5e-5. With no Taskonomy weights this trains on NYUD-v2 at 5e-4; to
  fine-tune: `--config.model_init=CKPT_STEP_DIR --config.lr=5e-5`.
- The paper gives no NYUD-v2 schedule; 200 epochs at batch 16 (~10k steps).
- Depth is evaluated on every valid pixel of the whole frame, not on the
  Eigen crop (the model needs a 32-multiple input; the crop is 426x560).
"""
from configs import polymax_synthetic
from uvimx.datasets import nyuv2_labeled

_SIZE = (nyuv2_labeled.HEIGHT, nyuv2_labeled.WIDTH)
_LABEL = {"semseg": "semantics", "depth": "depth", "normals": "normals"}
_DECODE = {"semseg": "", "depth": "decode_depth_png|",
           "normals": "decode_normals_png|"}


def _pp(task, train):
  label = _LABEL[task]
  flip = (f"randu('fliplr')|det_fliplr(key='image')|"
          f"det_fliplr(key='{label}')|" if train else "")
  cast = "|cast('int32', key='semantics')" if task == "semseg" else ""
  return (f"decode|{_DECODE[task]}{flip}value_range(-1, 1){cast}|"
          f"keep('image', '{label}')")


def get_config(arg="depth"):
  """Returns the config of variant `arg` (see the module docstring)."""
  if arg == "smoke":
    raise ValueError("polymax_nyu has no smoke variant: use "
                     "configs/polymax_synthetic.py:smoke.")
  config = polymax_synthetic.get_config(arg)
  task = config.task.name
  # Only name and split change: train and evals keep sharing one data_dir.
  config.input.data.name = "nyuv2_labeled"
  config.input.pp = _pp(task, train=True)
  config.input.batch_size = 16
  config.input.shuffle_buffer_size = 1_000

  if task == "semseg":
    config.task.num_classes = len(nyuv2_labeled.CLASS_NAMES)
    config.task.ignore_label = nyuv2_labeled.IGNORE_LABEL
  elif task == "depth":
    config.task.min_depth = 1e-3
  num_clusters = config.model.get("num_clusters")  # None: semseg, per-pixel.
  config.model = dict(
      input_size=_SIZE, backbone="resnet", per_pixel=config.model.per_pixel,
      backbone_kwargs=dict(widths=(256, 512, 1024, 2048), depths=(3, 4, 6, 3),
                           bottleneck=True, stem_width=64),
      # kMaX's pixel decoder widths and 2+2+2 decoder layers at D = 256.
      decoder_width=(512, 256, 128, 64), embedding_dim=128,
      transformer_width=256, layers_per_stage=(2, 2, 2), num_heads=8)
  if num_clusters:
    config.model.num_clusters = 16

  config.total_epochs = 200
  del config["total_steps"]
  config.log_training_steps = 50
  config.checkpoint_steps = 1000
  config.keep_checkpoint_steps = 5000
  config.schedule.warmup_steps = 500

  config.evals.val.data.update(name="nyuv2_labeled", split="test")
  config.evals.val.update(pp=_pp(task, train=False), batch_size=16,
                          log_steps=2000)
  if task == "semseg":
    config.evals.val.update(num_classes=config.task.num_classes,
                            class_names=nyuv2_labeled.CLASS_NAMES)
  elif task == "depth":
    config.evals.val.max_depth = 10.0
  return config
