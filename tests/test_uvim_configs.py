"""The UViM configs build, and their models have big_vision's structure.

Every variant of `configs/uvim_paper.py`, `configs/uvim_synthetic.py` and
`configs/bench_uvim.py` builds its trainer and initialises (shapes only, by
`jax.eval_shape`) to big_vision's top-level parameter names and the head,
dictionary and vocabulary shapes its config implies. The paper configs are
first shrunk (64x64 inputs, tiny widths and depths, short codes) keeping
their structure and patch size; their pp strings run at full size on fake
examples of their datasets and yield exactly the trainer's input spec.
"""
import re

import jax
import numpy as np
import pytest

from configs import bench_uvim
from configs import uvim_paper
from configs import uvim_synthetic
from pp import builder
from uvimx import optim
from uvimx import trainers
from uvimx import utils

TASKS = ("panoptic", "depth", "colorization")
PAPER = [f"{t}_{s}" for t in TASKS for s in ("stage1", "stage2")]
SYNTHETIC = ([f"{t}_{s}" for t in TASKS
              for s in ("stage1", "base_only", "stage2")] +
             ["panoptic_stage2_nonar", "smoke_stage1", "smoke_stage2"])
CONFIGS = ([(uvim_paper, v) for v in PAPER] +
           [(uvim_synthetic, v) for v in SYNTHETIC] +
           [(bench_uvim, v) for v in ("s1", "s2")])

# Per-patch channels of each task's heads in the paper configs.
PAPER_HEADS = {"panoptic": {"semantics": 134, "instances": 100},
               "depth": {"depth": 256}, "colorization": {"color": 3}}


def shrink(config):
  """A paper config at 64x64 with tiny widths, for a quick init."""
  stage1 = (config.model if config.trainer == "uvim_stage1"
            else config.oracle.model)
  stage1.update(input_size=(64, 64), code_len=4, width=32, enc_depth=1,
                dec_depth=2, mlp_dim=64, num_heads=2, dict_size=16,
                codeword_dim=8)
  if config.trainer == "uvim_stage2":
    config.model.update(input_size=(64, 64), num_layers=2, num_heads=2,
                        mlp_dim=64, emb_dim=32)
  return config


def get_config(module, variant):
  config = module.get_config(variant)
  return shrink(config) if module is uvim_paper else config


def init_shapes(config):
  trainer = trainers.get_trainer(config)
  return jax.eval_shape(trainer.init, jax.random.key(0),
                        trainer.input_spec(2))


def stage1_names(model):
  names = {"encoder", "decoder", "pos_embedding_encoder",
           "pos_embedding_decoder", "encoder_head", "decoder_stem"}
  if model.get("with_encoder_ctx"):
    names.add("ctx_enc_embedding")
  if model.get("with_decoder_ctx"):
    names.add("ctx_dec_embedding")
  if not model.get("bottleneck_resize"):
    names |= {"bottleneck_downsample", "bottleneck_upsample"}
  return names


def check_stage1(variables, model, heads):
  """big_vision's proj.uvim.vit names and the heads' and codebook's shapes."""
  params = variables["params"]
  patch_pixels = int(np.prod(model.patch_size))
  assert set(params) == stage1_names(model) | {
      f"{p}_{k}" for k in heads for p in ("embedding", "head")}
  for k, channels in heads.items():
    assert params[f"head_{k}"]["kernel"].shape == (
        model.width, channels, patch_pixels)
    assert params[f"embedding_{k}"]["kernel"].shape == (
        channels, patch_pixels, model.width)
  assert set(params["encoder"]) == (
      {f"encoderblock_{i}" for i in range(model.enc_depth)} |
      {"encoder_norm"})
  assert len(params["decoder"]) == model.dec_depth + 1
  codeword_dim = model.get("codeword_dim") or model.width
  assert variables["state"]["dictionary"].shape == (
      model.dict_size, codeword_dim)
  assert variables["state"]["counts"].shape == (model.dict_size,)


def check_stage2(variables, config):
  """big_vision's proj.uvim.vtt names; vocabulary and code length."""
  params, lm = variables["params"], config.model
  assert set(params) == {"EmbedPatches", "encoder", "decoder",
                         "pos_embedding_encoder", "pos_embedding_decoder"}
  blocks = {f"EncDecBlock{i}" for i in range(lm.num_layers)}
  embed = {"EmbedTargets"} if lm.get("autoregressive", True) else set()
  assert set(params["decoder"]) == blocks | embed | {"LayerNorm",
                                                     "LogitsDense"}
  vocab = config.oracle.model.dict_size + 1
  assert params["decoder"]["LogitsDense"]["kernel"].shape == (lm.emb_dim,
                                                              vocab)
  if embed:
    assert params["decoder"]["EmbedTargets"]["embedding"].shape == (
        vocab, lm.emb_dim)
  assert params["pos_embedding_decoder"].shape == (
      1, config.oracle.model.code_len, lm.emb_dim)
  assert set(variables["state"]) == {"oracle"}


def expected_heads(task):
  """{output: channels per pixel} of a task config."""
  if task.name == "panoptic":
    return {"semantics": task.num_classes, "instances": task.max_instances}
  if task.name == "depth":
    return {"depth": task.get("num_bins", 256)}
  return {"color": 3}


@pytest.mark.parametrize("module,variant", CONFIGS,
                         ids=[f"{m.__name__.split('.')[-1]}:{v}"
                              for m, v in CONFIGS])
def test_config_inits_with_big_vision_names(module, variant):
  config = get_config(module, variant)
  variables = init_shapes(config)
  if config.trainer == "uvim_stage1":
    check_stage1(variables, config.model, expected_heads(config.task))
  else:
    check_stage2(variables, config)
    check_stage1(variables["state"]["oracle"], config.oracle.model,
                 expected_heads(config.task))


@pytest.mark.parametrize("variant", PAPER)
def test_paper_config_values(variant):
  """The paper's sizes, which the other tests shrink, and the optimizer."""
  config = uvim_paper.get_config(variant)
  stage1 = (config.model if config.trainer == "uvim_stage1"
            else config.oracle.model)
  assert (stage1.input_size, stage1.patch_size) == ((512, 512), (16, 16))
  assert (stage1.width, stage1.enc_depth, stage1.dec_depth) == (768, 6, 12)
  assert (stage1.code_len, stage1.dict_size) == (256, 4096)
  assert expected_heads(config.task) == PAPER_HEADS[config.task.name]
  assert config.optax_name == "scale_by_adafactor"
  assert config.schedule.decay_type == "cosine"
  if config.trainer == "uvim_stage2":
    assert (config.model.emb_dim, config.model.num_layers) == (1024, 24)
    assert config.model.vocab_size == 4097
    assert config.model.seq_len == 256
    assert config.input.batch_size == 512
    assert config.lr == 1e-3
  else:
    assert config.input.batch_size == 1024
    assert config.w_commitment == 0.0


def test_paper_stage2_at_full_size():
  """Unshrunk: the LM's encoder is exactly a headless ViT-L/16."""
  config = uvim_paper.get_config("panoptic_stage2")
  variables = init_shapes(config)
  check_stage2(variables, config)
  check_stage1(variables["state"]["oracle"], config.oracle.model,
               expected_heads(config.task))
  params = variables["params"]
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      (params["encoder"], params["EmbedPatches"])))
  # ViT-L/16's 304,326,632 parameters less its 1000-class head, class token
  # and 197 position embeddings (the LM learns 32x32 of its own).
  assert count == 304_326_632 - 1_025_000 - 1024 - 197 * 1024
  assert params["pos_embedding_encoder"].shape == (1, 32 * 32, 1024)


@pytest.mark.parametrize("task", TASKS)
def test_stage2_lr_mults_slow_down_exactly_the_encoder(task):
  config = shrink(uvim_paper.get_config(f"{task}_stage2"))
  params = init_shapes(config)["params"]
  optim.make(config, params, total_steps=100_000)  # Rejects bad rules.
  for name, _ in utils.named_leaves(params):
    mult = next(m for pattern, m in config.lr_mults + [(".*", 1.0)]
                if re.fullmatch(pattern, name))
    pretrained = name.startswith(
        ("encoder/", "EmbedPatches/", "pos_embedding_encoder"))
    assert mult == (0.1 if pretrained else 1.0), name


def test_shared_fields_follow_one_override():
  config = uvim_paper.get_config("panoptic_stage2")
  config.input.data.data_dir = "/data"
  config.evals.coco_panoptic.categories = "/c.json"
  config.oracle.model.dict_size = 16
  assert all(e.data.data_dir == "/data" for e in config.evals.values())
  assert all(e.categories == "/c.json" for e in config.evals.values()
             if e.type == "panoptic")
  assert config.model.vocab_size == 17


def fake_example(dataset):
  """An example with the feature layout of TFDS `dataset` (decoded)."""
  rng = np.random.default_rng(0)
  if dataset == "coco/2017_panoptic":
    panoptic = np.zeros((48, 64, 3), np.uint8)
    panoptic[10:30, 5:25, 0] = 7   # A thing, segment id 7.
    panoptic[30:, :, 0] = 9        # Stuff, segment id 9; the rest is void.
    return {"image": rng.integers(0, 256, (48, 64, 3), np.uint8),
            "panoptic_image": panoptic,
            "panoptic_objects": {"id": np.array([9, 7]),
                                 "label": np.array([120, 0]),
                                 "is_crowd": np.array([False, True])}}
  if dataset == "nyu_depth_v2":
    return {"image": rng.integers(0, 256, (480, 640, 3), np.uint8),
            "depth": rng.uniform(0.5, 9, (480, 640)).astype(np.float16)}
  return {"image": rng.integers(0, 256, (48, 64, 3), np.uint8),
          "label": np.int64(3)}


@pytest.mark.parametrize("variant", PAPER)
def test_paper_pp_yields_the_input_spec(variant):
  config = uvim_paper.get_config(variant)
  spec = trainers.get_trainer(config).input_spec(1)
  example = fake_example(config.input.data.name)
  # The PQ evaluators' pp also keeps the crowd map, the depth evaluator's
  # the cropped ground truth: for the evaluator only.
  pps = {(config.input.pp, ())} | {
      (e.pp, tuple(e[k] for k in ("crowd_key", "label_key")
                   if e.get(k) and e[k] not in spec))
      for e in config.evals.values()}
  for pp, evaluator_keys in pps:
    out = builder.get_preprocess_fn(pp)(dict(example))
    assert set(out) == set(spec) | set(evaluator_keys)
    for k, s in spec.items():
      assert (tuple(out[k].shape), out[k].dtype.as_numpy_dtype) == (
          s.shape[1:], s.dtype), (pp, k)


def test_paper_panoptic_pp_keeps_segments():
  config = uvim_paper.get_config("panoptic_stage1")
  example = fake_example(config.input.data.name)
  out = builder.get_preprocess_fn(config.evals.coco_panoptic.pp)(example)
  labels = out["labels"].numpy()
  # Semantics: label + 1 (0 void); instances numbered by their centres.
  assert set(np.unique(labels[..., 0])) == {0, 1, 121}
  assert set(np.unique(labels[labels[..., 0] == 1][:, 1])) == {1}
  assert set(np.unique(labels[labels[..., 0] == 121][:, 1])) == {2}
  # The crowd thing (segment 7) is resized like the labels: the crowd map is
  # 1 exactly on its pixels, and the PQ evaluators read it.
  assert out["crowd"].dtype == np.int32 and out["crowd"].shape == (512, 512, 1)
  np.testing.assert_array_equal(out["crowd"][..., 0], labels[..., 0] == 1)
  assert config.evals.coco_panoptic.crowd_key == "crowd"


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_paper_depth_metrics_at_the_crop_resolution(stage):
  # The paper's NYU metrics: 512x512 predictions resized (nearest) to the
  # Eigen-cropped ground truth at its own 426x560.
  config = uvim_paper.get_config(f"depth_{stage}")
  evaluator = config.evals.nyu_depth_val
  assert (evaluator.label_key, evaluator.resize_pred) == ("ground_truth",
                                                          "nearest")
  example = fake_example("nyu_depth_v2")
  out = builder.get_preprocess_fn(evaluator.pp)(dict(example))
  np.testing.assert_array_equal(
      out["ground_truth"][..., 0],
      example["depth"][45:471, 41:601].astype(np.float32))
  assert out["depth"].shape == (512, 512, 1)
