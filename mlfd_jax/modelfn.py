"""A Flax NNX model in functional form, so the train step can be a pure jitted function.

Variables travel as plain nested dicts: `params` (everything `nnx.Param`) and `model_state`
(everything else, e.g. BatchNorm statistics). Plain dicts keep checkpoints restorable with plain
orbax calls and let frozen teachers be ordinary jit inputs under `stop_gradient`.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  try:
    return DTYPES[name]
  except KeyError:
    raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}") from None


def _fill(template: nnx.State, pure: dict) -> nnx.State:
  state = jax.tree.map(lambda x: x, template)
  nnx.replace_by_pure_dict(state, pure)
  return state


def variables(model: nnx.Module) -> dict[str, Any]:
  """A built model's variables as plain dicts: `params` (every `nnx.Param`) and `model_state`."""
  _, params, state = nnx.split(model, nnx.Param, ...)
  return {"params": nnx.to_pure_dict(params), "model_state": nnx.to_pure_dict(state)}


class ModelFn:
  """Wraps a constructor `make(rngs) -> nnx.Module` as `init(key)` and `apply(variables, ...)`."""

  def __init__(self, make: Callable[[nnx.Rngs], nnx.Module]):
    self._make = make
    abstract = nnx.eval_shape(self._construct, jax.random.key(0))
    self.graphdef, self._params_t, self._state_t = nnx.split(abstract, nnx.Param, ...)
    # What `init` returns, as shapes and dtypes (`jax.ShapeDtypeStruct` leaves).
    self.abstract_variables = {"params": nnx.to_pure_dict(self._params_t),
                               "model_state": nnx.to_pure_dict(self._state_t)}
    self.level_names = tuple(getattr(abstract, "level_names", ()))
    self.shapes_by_size: dict[tuple[int, int], dict[str, tuple[int, ...]]] = {}  # level_shapes

  def _construct(self, key) -> nnx.Module:
    """The model, its parameters drawn from a traced `key`, built at trace time.

    Each draw from `nnx.Rngs` bumps its stream's counter through `Variable.set_value`, which
    asks the new value for its `.sharding`; a traced counter answers with an error whose message
    walks the whole trace so far, so tracing a constructor (under `jit` or `eval_shape`) took
    time quadratic in its parameter count. Under `ensure_compile_time_eval` whatever does not
    depend on the key (the counters, BatchNorm's ones and zeros) is computed while tracing, the
    parameters are still drawn in the traced program, bit for bit as before, and tracing a
    constructor costs 1.2-2.4x less (`python -m benchmarks.model_init`)."""
    with jax.ensure_compile_time_eval():
      return self._make(nnx.Rngs(key))

  def init(self, key) -> dict[str, Any]:
    return variables(self._construct(key))

  def module(self, variables: dict[str, Any]) -> nnx.Module:
    return nnx.merge(self.graphdef, _fill(self._params_t, variables["params"]),
                     _fill(self._state_t, variables["model_state"]))

  def apply(self, variables, x, *, train: bool, key=None):
    """Returns (logits, feature levels, new model_state)."""
    model = self.module(variables)
    rngs = nnx.Rngs(dropout=key) if key is not None else None
    logits, feats = model(x, train=train, rngs=rngs)
    _, _, new_state = nnx.split(model, nnx.Param, ...)
    return logits, feats, nnx.to_pure_dict(new_state)


def from_config(model_cfg, *, num_classes: int, image_size: int, dtype=jnp.float32) -> ModelFn:
  """A registered model from a config block `{name, **kwargs}`."""
  from mlfd_jax.models import create_model  # local: keeps this module importable on its own

  cfg = dict(model_cfg)
  name = cfg.pop("name")
  return ModelFn(lambda rngs: create_model(name, num_classes=num_classes, image_size=image_size,
                                           rngs=rngs, dtype=dtype, **cfg))


_INIT_SHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def init_shapes(init: Callable[[jax.Array], Any]) -> Any:
  """Shapes and dtypes of `init(key)`'s variables, traced once per init function.

  A run asks for them several times per model (the trainer's state layout, the restore targets
  of its evaluation and of every later stage that freezes it), and tracing a model's
  constructor costs about as much as tracing its forward pass. Weakly keyed: an entry lives as
  long as the function (a spec's `init`) does.
  """
  if init not in _INIT_SHAPES:
    _INIT_SHAPES[init] = jax.eval_shape(init, jax.random.key(0))
  return _INIT_SHAPES[init]


def level_shapes(model: ModelFn, image_size: int, *, channels: int = 3
                 ) -> dict[str, tuple[int, ...]]:
  """`{level: per-example shape}` of a model's features at `image_size`, without computing;
  traced once per model and size (building a run's specs asks for the same shapes often)."""
  if (image_size, channels) not in model.shapes_by_size:
    def forward(variables):
      x = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
      return model.apply(variables, x, train=False)[1]

    feats = jax.eval_shape(forward, model.abstract_variables)
    model.shapes_by_size[image_size, channels] = {k: tuple(v.shape[1:])
                                                  for k, v in feats.items()}
  return dict(model.shapes_by_size[image_size, channels])
