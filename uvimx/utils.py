"""Small helpers shared by train.py, optim, sharding and evaluators."""
import jax


def path_name(path):
  """"encoder/Dense_0/kernel" for a pytree key path: what config regexes see."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def named_leaves(tree):
  """[(path_name, leaf)] of a pytree, in flattening order."""
  return [(path_name(path), leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def steps(prefix, config, data_size=None, batch_size=None, total_steps=None,
          default=ValueError):
  """Reads a step count given as `{prefix}_steps` or `{prefix}_epochs`.

  As big_vision's `u.steps`: configs say "log every 50 steps" or "warm up for
  2 epochs" in whichever unit is natural; epochs need the data and batch size.

  Args:
    prefix: e.g. "total", "log_training", "checkpoint", "warmup".
    config: a dict or ConfigDict holding at most one of the two keys.
    data_size: examples in one epoch (needed for `*_epochs`).
    batch_size: global batch size (needed for `*_epochs`).
    total_steps: if given, a negative step count means `total_steps + n + 1`,
      e.g. `decay_steps=-1` for "until the end".
    default: returned if neither key is set; the default raises.

  Returns:
    The number of steps (int).
  """
  steps_key, epochs_key = f"{prefix}_steps", f"{prefix}_epochs"
  given = [k for k in (steps_key, epochs_key) if config.get(k) is not None]
  if len(given) > 1:
    raise ValueError(f"Give either config.{steps_key} or config.{epochs_key},"
                     " not both.")
  if not given:
    if default is ValueError:
      raise ValueError(f"The config needs {steps_key} or {epochs_key}.")
    return default
  if given[0] == epochs_key:
    if not data_size or not batch_size:
      raise ValueError(f"config.{epochs_key} needs the data and batch size.")
    return int(round(config[epochs_key] * data_size / batch_size))
  n = int(config[steps_key])
  if n < 0 and total_steps is not None:
    n = total_steps + n + 1
  return n
