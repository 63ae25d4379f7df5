r"""big_vision's own UViM decoding, timed on this machine: decode.py's baseline.

The issue gives big_vision's codes/s from another machine (311 at batch 1,
941 at batch 32). This script measures them here, so that
`benchmarks/decode.py`'s codes/s can be divided by a baseline from the same
machine. It runs in big_vision's environment, not uvimx's, and imports no
uvimx code: a checkout of google-research/big_vision on PYTHONPATH, and the
versions of the issue's measurement. A full checkout also needs big_vision's
own requirements: `vtt.py` imports `big_vision.utils`, which imports
TensorFlow.

  python3 -m venv /tmp/bvenv
  /tmp/bvenv/bin/pip install jax==0.4.18 jaxlib==0.4.18 flax==0.7.4 \
      numpy==1.26.1 ml_collections einops absl-py
  PYTHONPATH=BIG_VISION_DIR /tmp/bvenv/bin/python benchmarks/big_vision_decode.py

First it decodes the big_vision fixture's stage-II LM and checks that the
greedy codes equal the fixture's, so what is timed is big_vision's decoder.
Then it times `decode.temperature_sampling` at temperature 1e-7, the greedy
decoding of big_vision's UViM trainer, on S2's LM with random N(0, 0.05^2)
weights. S2 has 4+4 layers, width 256, MLP 1024, 4 heads, 8x8 patches of
128x128 images, a vocabulary of 513 and 64 codes: the shapes of
`benchmarks/decode.py`. The time is the median per call, with compilation
excluded, as there. The table also gives the FLOP/s of a 2048^2 float32
matmul in the same process.
"""
import time

from absl import app
from absl import flags
from big_vision.models.proj.uvim import decode
from big_vision.models.proj.uvim import vtt
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "32"], "Batches.")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 4.0,
                                  "Time at least this long per row.")
_FIXTURES = flags.DEFINE_string(
    "fixtures", "/work/shared/fixtures/big_vision_uvim",
    "The big_vision_uvim fixture directory (its README documents it).")


def _greedy_fn(model, seq_len):
  """Jitted (params, images) -> codes (B, L), big_vision's greedy sampling."""
  def sample(params, images):
    codes, _, _ = decode.temperature_sampling(
        params={"params": params}, model=model, seed=jax.random.PRNGKey(0),
        inputs=images, prompts=jnp.zeros((images.shape[0], seq_len),
                                         jnp.int32),
        num_samples=1, eos_token=-1, prefill=False, temperature=1e-7)
    return codes[:, 0]
  return jax.jit(sample)


def _check_fixture(directory):
  """Raises unless big_vision decodes the fixture's greedy codes."""
  io = np.load(f"{directory}/stage2_io.npz")
  flat = dict(np.load(f"{directory}/stage2.npz"))
  params = flax.traverse_util.unflatten_dict(
      {tuple(k.split("/")): v for k, v in flat.items()})
  model = vtt.Model(
      patches=ml_collections.ConfigDict({"size": (4, 4)}), num_heads=4,
      num_layers=2, mlp_dim=128, emb_dim=64, vocab_size=33, seq_len=16,
      input_size=(32, 32), posemb_type="learn")
  codes = _greedy_fn(model, 16)(params.get("params", params), io["image"])
  if not (np.asarray(codes) == io["greedy_codes"]).all():
    raise RuntimeError("big_vision's greedy codes differ from the fixture's: "
                       "is PYTHONPATH a big_vision checkout?")


def _seconds(fn, args):
  """Median seconds per call of the compiled fn(*args)."""
  compiled = fn.lower(*args).compile()
  jax.block_until_ready(compiled(*args))  # Warm-up.
  times = []
  while sum(times) < _MIN_SECONDS.value:
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  _check_fixture(_FIXTURES.value)
  print(f"jax {jax.__version__}, flax {flax.__version__}: big_vision's greedy "
        "codes of the fixture's LM equal the fixture's\n")
  model = vtt.Model(
      patches=ml_collections.ConfigDict({"size": (8, 8)}), num_heads=4,
      num_layers=4, mlp_dim=1024, emb_dim=256, vocab_size=513, seq_len=64,
      input_size=(128, 128), posemb_type="learn")
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 128, 128, 3)),
                          jnp.zeros((1, 64), jnp.int32))
  rng = np.random.default_rng(0)
  # On the device, as uvimx's benchmark: not copied there at every call.
  params = jax.device_put(jax.tree_util.tree_map(
      lambda x: 0.05 * rng.standard_normal(x.shape).astype(np.float32),
      shapes["params"]))
  sample = _greedy_fn(model, 64)
  print("| big_vision greedy decoding | batch | codes/s |")
  print("|---|---|---|")
  for batch in [int(b) for b in _BATCHES.value]:
    images = jax.random.uniform(jax.random.PRNGKey(2), (batch, 128, 128, 3))
    print(f"| cached | {batch} | "
          f"{batch * 64 / _seconds(sample, (params, images)):.0f} |")
  a = jax.random.normal(jax.random.PRNGKey(0), (2048, 2048), jnp.float32)
  matmul_s = _seconds(jax.jit(lambda x: x @ x), (a,))
  print(f"\n2048x2048 float32 matmul: {2 * 2048**3 / matmul_s / 1e9:.1f} "
        "GFLOP/s")


if __name__ == "__main__":
  app.run(main)
