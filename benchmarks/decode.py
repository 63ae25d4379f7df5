r"""Speed of greedy code sampling from the stage-II LM, cached vs uncached.

  python -m benchmarks.decode

Times `uvimx.decode.sample` (images -> codes, the image encoder included, as
in big_vision's `temperature_sampling`) on the issue's S2 LM shapes (ViT
encoder + decoder, 4 layers each, width 256, MLP 1024, 4 heads, 8x8 patches
of 128x128 images, vocabulary 513, 64 codes) with random weights, and prints
a markdown table of codes/s: with the KV cache, without it (the full decoder
at every step), the non-autoregressive LM and AiT-P's parallel decoder (both
one pass; AiT-P keeps the causal mask and a learned input token), then the
time of the image encoder alone. Images are encoded `--encode_chunk` at a
time (see `uvimx.decode.encode`). Compilation is timed separately.
big_vision's own UViM (commit 9846ff2, jax 0.4.18) reached 311 codes/s at
batch 1 and 941 at batch 32 on the issue's 2-core CPU; the table gives the
ratio to those, and the FLOP/s of a float32 matmul in the same process.
Machines differ, so `benchmarks/big_vision_decode.py` times big_vision's
decoder on this machine: divide by its codes/s for a same-machine ratio.
"""
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from uvimx import decode
from uvimx.models import lm

_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "32", "64"], "Batches.")
_UNCACHED_MAX = flags.DEFINE_integer(
    "uncached_max_batch", 64, "Largest batch that is also timed uncached.")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 3.0,
                                  "Time at least this long per row.")
_ENCODE_CHUNK = flags.DEFINE_integer(
    "encode_chunk", 4, "Images encoded at a time (0: the whole batch).")
_SIZE = flags.DEFINE_integer("image_size", 128, "Image height and width.")
_PATCH = flags.DEFINE_integer("patch", 8, "Patch size.")
_WIDTH = flags.DEFINE_integer("emb_dim", 256, "Width.")
_MLP = flags.DEFINE_integer("mlp_dim", 1024, "MLP width.")
_HEADS = flags.DEFINE_integer("num_heads", 4, "Attention heads.")
_LAYERS = flags.DEFINE_integer("num_layers", 4, "Encoder and decoder depth.")
_VOCAB = flags.DEFINE_integer("vocab_size", 513, "Vocabulary.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 64, "Code length.")

# big_vision UViM, cached greedy decoding, codes/s by batch size (issue #4).
BIG_VISION = {1: 311, 32: 941}


def _model(autoregressive, parallel=False):
  return lm.Model(
      patches={"size": (_PATCH.value,) * 2}, num_heads=_HEADS.value,
      num_layers=_LAYERS.value, mlp_dim=_MLP.value, emb_dim=_WIDTH.value,
      vocab_size=_VOCAB.value, seq_len=_SEQ_LEN.value,
      input_size=(_SIZE.value,) * 2, posemb_type="learn",
      autoregressive=autoregressive, parallel=parallel)


def _random_params(model):
  """Random N(0, 0.05^2) leaves, none zero: the zero-initialised logits
  layer would make greedy decoding degenerate (all argmax ties)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), _images(1),
                          jnp.zeros((1, model.seq_len), jnp.int32))
  rng = np.random.default_rng(0)
  # On the device: numpy arguments would be copied to it at every call.
  return jax.device_put(jax.tree.map(
      lambda x: 0.05 * rng.standard_normal(x.shape, np.float32),
      shapes["params"]))


def _time(fn, args, min_seconds):
  """(median seconds per call, compile seconds) of the jitted fn(*args).

  The median, because this machine is shared: it ignores calls slowed down by
  other jobs without picking the luckiest one.
  """
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))  # Warm-up: allocations, caches.
  times = []
  while sum(times) < min_seconds:
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), compile_s


def _images(batch):
  return jax.random.uniform(jax.random.key(2),
                            (batch, _SIZE.value, _SIZE.value, 3))


def _speed(model, params, batch, cached):
  """(codes/s, compile seconds) of greedy sampling on `batch` images."""
  fn = decode.make_sample_fn(model, cached=cached,
                             encode_chunk=_ENCODE_CHUNK.value)
  seconds, compile_s = _time(fn, (params, _images(batch), jnp.arange(batch)),
                             _MIN_SECONDS.value)
  return batch * model.seq_len / seconds, compile_s


def _encoder_ms(model, params, batch):
  """Milliseconds per batch of `decode.encode` alone."""
  fn = jax.jit(lambda p, x: decode.encode(model, p, x, _ENCODE_CHUNK.value))
  return 1e3 * _time(fn, (params, _images(batch)), _MIN_SECONDS.value)[0]


def _matmul_gflops(n=2048):
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  seconds, _ = _time(jax.jit(lambda x: x @ x), (a,), 2.0)
  return 2 * n**3 / seconds / 1e9


def main(argv):
  del argv
  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}, "
        f"encode_chunk {_ENCODE_CHUNK.value}\n")
  ar, non_ar, parallel = _model(True), _model(False), _model(True, True)
  ar_params, non_ar_params = _random_params(ar), _random_params(non_ar)
  parallel_params = _random_params(parallel)
  batches = [int(b) for b in _BATCHES.value]
  rows = []
  for batch in batches:
    runs = [("cached", ar, ar_params, True)]
    if batch <= _UNCACHED_MAX.value:
      runs.append(("uncached", ar, ar_params, False))
    runs.append(("non-AR, one pass", non_ar, non_ar_params, True))
    runs.append(("AiT-P parallel, one pass", parallel, parallel_params, True))
    for name, model, params, cached in runs:
      rows.append((name, batch) + _speed(model, params, batch, cached))
  cached = {batch: codes_s for name, batch, codes_s, _ in rows
            if name == "cached"}
  print("| greedy decoding | batch | codes/s | compile (s) | vs cached | "
        "big_vision codes/s | vs big_vision |")
  print("|---|---|---|---|---|---|---|")
  for name, batch, codes_s, compile_s in rows:
    bv = BIG_VISION.get(batch) if name == "cached" else None
    print(f"| {name} | {batch} | {codes_s:.0f} | {compile_s:.1f} | "
          f"{codes_s / cached[batch]:.2f}x | {bv or ''} | "
          f"{f'{codes_s / bv:.2f}x' if bv else ''} |")
  print("\nOf which the image encoder alone (ms per batch): " + ", ".join(
      f"batch {b}: {_encoder_ms(ar, ar_params, b):.0f}" for b in batches))
  print(f"2048x2048 float32 matmul: {_matmul_gflops():.1f} GFLOP/s")


if __name__ == "__main__":
  app.run(main)
