"""Optimizer construction from the config: optax chain + lr schedules.

As big_vision's `optax.py`. The config describes *what* to do to which
parameters; `make` turns it into one `optax.GradientTransformation`:

  config.optax_name = "scale_by_adafactor"  # or any optax name: scale_by_adam
  config.optax = dict(momentum=0.9)         # kwargs for it
  config.lr = 1e-3
  config.schedule = dict(warmup_steps=1_000, decay_type="cosine")
  config.lr_mults = [("head/.*", 10.0)]     # optional, first match wins
  config.wd = 1e-4                          # optional, decoupled, see below
  config.wd_mults = [("(.*/)?kernel", 1.0)] # optional, this is the default
  config.grad_clip_norm = 1.0               # optional

Per-parameter settings are lists of `(regex, value)`; a regex must match the
whole "/"-joined parameter path (e.g. "encoder/Dense_0/kernel"), the first
matching rule wins, and a rule that matches no parameter (a typo, or one that
an earlier rule shadows) is an error. `config.schedule` may also be such a
list, to give groups of parameters their own schedule; a `None` schedule
freezes the group.

For a trainable parameter `p` with gradient `g`, one step does

  p <- p - s(t) * (lr * lr_mult * u(g) + wd * wd_mult * p)

where `u` is the `optax_name` transformation (after global-norm clipping of
all trainable gradients to `grad_clip_norm`) and `s(t)` is the parameter's
schedule, a multiplier in [0, 1] that peaks at 1 (see `create_schedule`). So
weight decay is decoupled from the gradient and not multiplied by `lr` or
`lr_mult` (Loshchilov & Hutter), but it follows warmup and decay. A frozen
parameter gets an update of exactly zero, no optimizer state (optax stores a
`MaskedNode` for it) and does not count towards the clipped gradient norm.

Because Adafactor's statistics and weight decay read the parameters, call
`tx.update(grads, opt_state, params)`.
"""
import operator
import re

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from uvimx import utils


def scale_by_adafactor(min_dim_size_to_factor=32, decay_rate=0.8,
                       decay_offset=0, beta2_cap=0.999,
                       clipping_threshold=None, momentum=0.9,
                       dtype_momentum=jnp.bfloat16, eps=1e-30):
  """big_vision's Adafactor variant (Zhai et al. 2021, "Scaling ViTs").

  Compared to Adafactor as in the paper (Shazeer & Stern 2018) it caps the
  second-moment decay, adds (optional) momentum kept in low precision, and
  does no parameter-scale-relative step size: the lr is applied by `make`.

  Args:
    min_dim_size_to_factor: arrays whose two largest dims are both at least
      this large keep factored (row + column) second moments, others full ones.
    decay_rate: second moments decay with `beta2_t = 1 - (t + 1)^-decay_rate`,
      t = step - decay_offset counted from 0 (so the first step uses g^2 only).
    decay_offset: for fine-tuning, the step at which the decay schedule starts.
    beta2_cap: upper bound on beta2_t. Uncapped, beta2_t -> 1 and the second
      moments freeze late in training; the cap keeps them adapting.
    clipping_threshold: if set, clips each update array to this RMS.
    momentum: EMA decay of the (clipped) updates; None or 0 for none.
    dtype_momentum: dtype of the momentum buffer; bf16 halves its memory.
    eps: added to the squared gradients.

  Returns:
    An `optax.GradientTransformation`; its `update` needs `params`.
  """
  def capped_decay_rate(step, exponent):
    t = jnp.asarray(step, jnp.float32) + 1.0
    return jnp.minimum(beta2_cap, 1.0 - t ** -exponent)

  return optax.chain(
      optax.scale_by_factored_rms(
          factored=True, decay_rate=decay_rate, step_offset=decay_offset,
          min_dim_size_to_factor=min_dim_size_to_factor, epsilon=eps,
          decay_rate_fn=capped_decay_rate),
      (optax.clip_by_block_rms(clipping_threshold) if clipping_threshold
       else optax.identity()),
      (optax.ema(momentum, debias=False, accumulator_dtype=dtype_momentum)
       if momentum else optax.identity()),
  )


# Transformations of uvimx's own, found by `config.optax_name` before optax's.
TRANSFORMS = {"scale_by_adafactor": scale_by_adafactor}

_SCHEDULE_KEYS = {"decay_type", "warmup_steps", "warmup_epochs",
                  "cooldown_steps", "cooldown_epochs", "linear_end",
                  "timescale"}


def create_schedule(schedule, *, total_steps, data_size=None,
                    batch_size=None):
  """Returns `step -> multiplier` of the lr (in [0, 1], peak 1).

  With `w` warmup and `c` cooldown steps (`{warmup,cooldown}_{steps,epochs}`,
  default 0), `T = total_steps`, `e = linear_end` (default 0, a fraction of
  the peak) and the decay progress `p = clip((t - w) / (T - w), 0, 1)`:

    decay_type="constant": 1                          (the default)
               "linear":   e + (1 - e) * (1 - p)
               "cosine":   e + (1 - e) * (1 + cos(pi * p)) / 2
               "rsqrt":    sqrt(k / (k + max(t - w, 0))), k = timescale
                           (default 10_000), i.e. 1 / sqrt(1 + (t - w) / k)

  then times `min(1, t / w)` (linear warmup from 0) and times
  `clip((T - t) / c, 0, 1)` (linear cooldown to 0, mostly for "rsqrt").
  `t` counts the updates done so far: the first update uses t = 0.

  Args:
    schedule: a dict (or ConfigDict) with the keys above.
    total_steps: the number of training steps.
    data_size: examples in one epoch, for `*_epochs`.
    batch_size: global batch size, for `*_epochs`.

  Raises:
    ValueError: unknown key or decay_type, negative warmup or cooldown, a
      timescale <= 0, or warmup not shorter than training.
  """
  if unknown := set(schedule.keys()) - _SCHEDULE_KEYS:
    raise ValueError(f"Unknown schedule keys {sorted(unknown)} in {schedule};"
                     f" known: {sorted(_SCHEDULE_KEYS)}.")
  decay_type = schedule.get("decay_type", "constant")
  end = schedule.get("linear_end", 0.0)
  timescale = schedule.get("timescale", 10_000)
  decays = {
      "constant": lambda p, t: 1.0,
      "linear": lambda p, t: end + (1.0 - end) * (1.0 - p),
      "cosine": lambda p, t: end + (1.0 - end) * (1 + jnp.cos(jnp.pi * p)) / 2,
      "rsqrt": lambda p, t: jnp.sqrt(timescale / (timescale + t)),
  }
  if decay_type not in decays:
    raise ValueError(f"Unknown decay_type {decay_type!r}; known: "
                     f"{sorted(decays)}.")
  if timescale <= 0:
    raise ValueError(f"config.schedule's timescale must be positive, not "
                     f"{timescale}.")
  warmup = utils.steps("warmup", schedule, data_size, batch_size, default=0)
  cooldown = utils.steps("cooldown", schedule, data_size, batch_size,
                         default=0)
  if min(warmup, cooldown) < 0:
    raise ValueError(f"config.schedule's warmup ({warmup} steps) and cooldown "
                     f"({cooldown} steps) must not be negative.")
  # Runs of 0 or 1 steps (eval only, debugging) may keep the config's warmup.
  if total_steps > 1 and warmup >= total_steps:
    raise ValueError(f"Warmup ({warmup} steps, config.schedule's warmup_*) "
                     f"must be shorter than training ({total_steps} steps, "
                     "config.total_steps or total_epochs).")

  def fn(step):
    step = jnp.asarray(step, jnp.float32)
    since_warmup = jnp.maximum(step - warmup, 0.0)
    progress = jnp.minimum(since_warmup / max(total_steps - warmup, 1), 1.0)
    mult = decays[decay_type](progress, since_warmup)
    if warmup:
      mult = mult * jnp.minimum(1.0, step / warmup)
    if cooldown:
      mult = mult * jnp.clip((total_steps - step) / cooldown, 0.0, 1.0)
    return jnp.asarray(mult, jnp.float32)
  return fn


def make(config, params, *, total_steps, data_size=None, batch_size=None):
  """Returns the optimizer and per-group `step -> lr` functions.

  Args:
    config: a dict or ConfigDict with the keys in the module docstring.
    params: the parameter tree; only its structure and paths are used, so a
      tree of `jax.ShapeDtypeStruct` works.
    total_steps: the number of training steps, for the schedules.
    data_size: examples in one epoch, for `warmup_epochs` and the like.
    batch_size: global batch size, for `warmup_epochs` and the like.

  Returns:
    `(tx, sched_fns)`: an `optax.GradientTransformation` and, for logging,
    one `step -> lr * s(step)` function per non-frozen schedule group, in
    config order (the first is the main group; lr_mults are not included).

  Raises:
    ValueError: for any config mistake (see the messages).
  """
  if (lr := config.get("lr")) is None:
    raise ValueError("The config needs an lr.")
  if not 0 < lr <= float(np.finfo(np.float32).max):  # Computed in float32.
    raise ValueError(f"config.lr must be positive and finite in float32, not "
                     f"{lr}.")
  schedule = config.get("schedule", {})
  if not isinstance(schedule, (list, tuple)):
    schedule = [(".*", schedule)]
  groups, scheds = _first_match(params, schedule, "config.schedule")
  if uncovered := [n for n, i in utils.named_leaves(groups) if i < 0]:
    raise ValueError(f"config.schedule has no rule for {uncovered}; end "
                     "it with ('.*', None) to freeze the rest explicitly.")
  frozen = jax.tree.map(lambda i: scheds[i] is None, groups)
  trainable = jax.tree.map(operator.not_, frozen)
  if not any(jax.tree.leaves(trainable)):
    raise ValueError("config.schedule freezes every parameter.")

  for key in ("grad_clip_norm", "wd"):
    if (config.get(key) or 0) < 0:
      raise ValueError(f"config.{key} must not be negative, not "
                       f"{config[key]}; 0 or None turns it off.")
  txs = []
  if config.get("grad_clip_norm"):
    txs.append(optax.masked(
        optax.clip_by_global_norm(config["grad_clip_norm"]), trainable))
  txs.append(optax.masked(_named_transform(config), trainable))

  txs.append(optax.scale(lr))
  index, mults = _first_match(params, config.get("lr_mults", []),
                              "config.lr_mults")
  if bad := [m for m in mults if not _is_number(m) or m <= 0]:
    raise ValueError(f"config.lr_mults must be positive numbers, not {bad}; "
                     "freeze with a None schedule instead.")
  txs += [optax.masked(optax.scale(m), mask)
          for m, mask in zip(mults, _masks(index, len(mults)))]

  # Added after the lr scaling, so that only the schedule multiplies it.
  if wd := config.get("wd"):
    index, mults = _first_match(
        params, config.get("wd_mults", [("(.*/)?kernel", 1.0)]),
        "config.wd_mults")
    if not mults:
      raise ValueError(f"config.wd={wd} with an empty config.wd_mults decays "
                       "nothing: give wd_mults rules, or set wd=0.")
    if bad := [m for m in mults if not _is_number(m) or m < 0]:
      raise ValueError(f"config.wd_mults must be numbers >= 0, not {bad}.")
    txs += [optax.add_decayed_weights(wd * m, mask)
            for m, mask in zip(mults, _masks(index, len(mults)))]

  fns = [create_schedule(s, total_steps=total_steps, data_size=data_size,
                         batch_size=batch_size) if s is not None else None
         for s in scheds]
  txs += [optax.masked(optax.scale_by_schedule(fn), mask)
          for fn, mask in zip(fns, _masks(groups, len(fns))) if fn is not None]
  # The updates of frozen params passed untouched through everything above.
  txs.append(optax.masked(optax.set_to_zero(), frozen))
  txs.append(optax.scale(-1.0))

  sched_fns = [lambda step, fn=fn: lr * fn(step)
               for fn in fns if fn is not None]
  return optax.chain(*txs), sched_fns


def _is_number(x):
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _named_transform(config):
  """Returns `config.optax_name(**config.optax)`, ours first, then optax's.

  big_vision's names of its own transformations ("big_vision.NAME") find
  ours, so that its configs' optimizer settings carry over.
  """
  name = config.get("optax_name")
  if isinstance(name, str):
    name = name.removeprefix("big_vision.")
  try:
    fn = TRANSFORMS.get(name) or operator.attrgetter(name)(optax)
  except (AttributeError, TypeError):
    fn = None
  # optax also exports classes (e.g. GradientTransformation): not transforms.
  if not callable(fn) or isinstance(fn, type):
    raise ValueError(f"Unknown config.optax_name {name!r}: neither one of "
                     f"{sorted(TRANSFORMS)} nor an optax function.")
  return fn(**config.get("optax", {}))


def _first_match(params, rules, what):
  """Returns a tree of the first matching rule's index (-1: none), values.

  Args:
    params: the parameter tree.
    rules: a list of `(regex, value)`; a regex must match the whole path.
    what: the config key, for messages.

  Raises:
    ValueError: `rules` is not a list of (regex, value) or a regex is bad.
  """
  if (not isinstance(rules, (list, tuple)) or
      not all(isinstance(r, (list, tuple)) and len(r) == 2 and
              isinstance(r[0], str) for r in rules)):
    raise ValueError(f"{what} must be a list of (regex, value), not {rules!r}.")
  patterns, values = zip(*rules) if rules else ((), ())
  try:
    regexes = [re.compile(p) for p in patterns]
  except re.error as e:
    raise ValueError(f"{what}: bad regex {e.pattern!r}: {e}") from None

  names = [name for name, _ in utils.named_leaves(params)]
  index = [next((i for i, r in enumerate(regexes) if r.fullmatch(name)), -1)
           for name in names]
  # A regex typo would otherwise silently leave its parameters at the
  # default (e.g. a pre-trained encoder trained at 10x its lr_mult).
  for i, (pattern, value) in enumerate(rules):
    if matched := [name for name, j in zip(names, index) if j == i]:
      logging.info("%s: %r (%s) matches %d parameters, e.g. %s", what,
                   pattern, value, len(matched), matched[:3])
    else:
      raise ValueError(
          f"{what}: {pattern!r} matches no parameter (before it, rules "
          f"{[p for p, _ in rules[:i]]} match first); the parameters are "
          f"e.g. {names[:5]}. Fix or remove the rule.")
  index = jax.tree.unflatten(jax.tree.structure(params), index)
  return index, values


def _masks(index, n):
  """Returns, for rules 0..n-1, the bool tree of where `index` picks it."""
  return [jax.tree.map(lambda j, i=i: j == i, index) for i in range(n)]
