"""The global registry of pp ops and the parser of one pipe piece.

An op is a factory: called with the arguments written in the pipe string, it
returns a function `data -> data` on a dict of tensors. Factories register
themselves when their module is imported:

  @registry.register("keep")
  def get_keep(*keys): ...
"""
import ast
import difflib
import inspect

_OPS = {}


def register(name):
  """Returns a decorator registering an op factory under `name`."""
  def _register(factory):
    if name in _OPS:
      raise ValueError(f"pp op {name!r} is registered twice.")
    _OPS[name] = factory
    return factory
  return _register


def lookup(name):
  """Returns the factory of op `name`, suggesting close names if unknown."""
  if name not in _OPS:
    close = difflib.get_close_matches(name, _OPS, n=3)
    hint = (f"did you mean {' or '.join(map(repr, close))}?" if close
            else f"registered ops: {', '.join(sorted(_OPS))}.")
    raise ValueError(f"Unknown pp op {name!r}; {hint}")
  return _OPS[name]


def parse(piece):
  """Parses one pipe piece `name` or `name(args)` into (name, args, kwargs).

  Arguments must be Python literals (numbers, strings, tuples, lists, dicts,
  None, booleans); they are read with `ast.literal_eval`, never evaluated.

  Args:
    piece: one piece of a pipe string, e.g. `resize(64, method="nearest")`.

  Returns:
    A tuple (name, args, kwargs).

  Raises:
    ValueError: quoting the piece, if it is not a call with literal arguments.
  """
  try:
    expr = ast.parse(piece.strip(), mode="eval").body
  except SyntaxError as err:
    raise ValueError(f"Malformed pp op {piece!r}: {err.msg}.") from None
  if isinstance(expr, ast.Name):
    return expr.id, (), {}
  if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name)):
    raise ValueError(
        f"Malformed pp op {piece!r}: expected `name` or `name(arguments)`.")
  # `op(**d)` parses as a keyword without a name; literal_eval would accept
  # the dict, so it is rejected here.
  if any(kw.arg is None for kw in expr.keywords):
    raise ValueError(f"Malformed pp op {piece!r}: `**` is not supported.")
  try:
    args = tuple(ast.literal_eval(arg) for arg in expr.args)
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in expr.keywords}
  except (ValueError, TypeError, SyntaxError):
    raise ValueError(
        f"Malformed pp op {piece!r}: arguments must be Python literals "
        "(quote strings).") from None
  return expr.func.id, args, kwargs


def check_arguments(name, args, kwargs):
  """Raises ValueError naming op and argument if the call would not bind."""
  signature = inspect.signature(lookup(name))
  params = signature.parameters.values()
  # Checked before binding, which would first complain about a required
  # argument that a misspelt keyword was meant to give.
  if all(p.kind != p.VAR_KEYWORD for p in params):
    unknown = [k for k in kwargs if k not in signature.parameters]
    if unknown:
      raise ValueError(
          f"pp op {name!r} has no argument {', '.join(map(repr, unknown))}; "
          f"its signature is {name}{signature}.")
  try:
    signature.bind(*args, **kwargs)
  except TypeError as err:
    raise ValueError(
        f"Wrong arguments for pp op {name!r}: {err}; "
        f"its signature is {name}{signature}.") from None
