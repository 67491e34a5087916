"""Model zoo: levels, strides and widths (against docs/models.md), BatchNorm modes, dropout keys,
bf16, registry errors and gradient flow.

Shapes and dtypes are checked with `jax.eval_shape` (tracing only, no compile); only the tests about
values run real, tiny, jitted computations, so the file stays fast on a 2-core CPU.
"""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mlfd_jax.models import MODELS, create_model, model_options
from mlfd_jax.models.layers import drop_path

NUM_CLASSES = 5
LEVELS = ("stage1", "stage2", "stage3", "stage4", "pooled")
DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "models.md"

# Tiny variants and the channels their four stages must have.
TINY = {
    "resnet18": (dict(width=0.125), (8, 16, 32, 64)),
    "resnet34": (dict(width=0.125), (8, 16, 32, 64)),
    "resnet50": (dict(width=0.125), (32, 64, 128, 256)),
    "convnext_atto": (dict(width=0.1, depths=(1, 1, 1, 1)), (4, 8, 16, 32)),
    "convnext_tiny": (dict(width=0.1, depths=(1, 1, 1, 1)), (10, 19, 38, 77)),
    "vit_ti": (dict(width=0.1, depth=4), (19,) * 4),
    "vit_s": (dict(width=0.1, depth=4), (38,) * 4),
}
# Stage strides by family for image_size <= 64 and > 64 (the stem rule).
STRIDES = {
    "resnet": ((1, 2, 4, 8), (4, 8, 16, 32)),
    "convnext": ((2, 4, 8, 16), (4, 8, 16, 32)),
    "vit": ((4, 4, 4, 4), (16, 16, 16, 16)),
}


def family(name):
  return re.match(r"[a-z]+", name).group()


def key(seed=0):
  # RBG keys: random ops (init, dropout) compile several times faster than threefry's on CPU.
  return jax.random.key(seed, impl="rbg")


def rngs(seed=0):
  return nnx.Rngs(key(seed))


def build(name, image_size=32, *, seed=None, **kw):
  return create_model(name, num_classes=NUM_CLASSES, image_size=image_size,
                      rngs=rngs() if seed is None else nnx.Rngs(seed), **kw)


def abstract_apply(name, image_size, *, batch=2, train=False, **kw):
  """(abstract model, (logits, feats) as ShapeDtypeStructs) without running anything."""
  # An int seed traces faster than a typed key; nothing is compiled here anyway.
  model = nnx.eval_shape(lambda: build(name, image_size, seed=0, **kw))
  graphdef, state = nnx.split(model)
  x = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=train), state, x)
  return model, out


def doc_table():
  """{(model, input): [(h, w, c, stride) x 4 stages, pooled width]} parsed from docs/models.md."""
  cell = re.compile(r"(\d+)x(\d+)x(\d+) \(/(\d+)\)")
  rows = {}
  for line in DOCS.read_text().splitlines():
    parts = [p.strip() for p in line.strip().strip("|").split("|")]
    if len(parts) == 7 and parts[0] in MODELS:
      stages = [tuple(int(g) for g in cell.fullmatch(p).groups()) for p in parts[2:6]]
      rows[parts[0], int(parts[1])] = (stages, int(parts[6]))
  return rows


def test_registry_lists_every_model():
  assert MODELS.names() == sorted(TINY)


def test_docs_table_covers_every_model_at_32_and_224():
  assert set(doc_table()) == {(m, px) for m in TINY for px in (32, 224)}


@pytest.mark.parametrize("name,px", sorted(doc_table()))
def test_full_size_levels_match_docs_table(name, px):
  stages, pooled = doc_table()[name, px]
  model, (logits, feats) = abstract_apply(name, px, batch=1)
  assert model.level_names == LEVELS and model.image_size == px
  assert set(feats) == set(LEVELS)
  assert logits.shape == (1, NUM_CLASSES)
  for level, (h, w, c, stride) in zip(LEVELS, stages):
    assert feats[level].shape == (1, h, w, c), level
    assert (h * stride, w * stride) == (px, px), level
  assert feats["pooled"].shape == (1, pooled)


# Every model at 32 px; one of each family (the bottleneck too) past the 64 px stem switch.
@pytest.mark.parametrize("name,px", [(m, 32) for m in sorted(TINY)] + [
    ("resnet18", 96), ("resnet50", 96), ("convnext_atto", 96), ("vit_ti", 96)])
def test_tiny_levels_follow_stem_rule(name, px):
  kw, channels = TINY[name]
  model, (logits, feats) = abstract_apply(name, px, **kw)
  assert model.level_names == LEVELS and model.image_size == px
  assert logits.shape == (2, NUM_CLASSES) and logits.dtype == jnp.float32
  assert set(feats) == set(LEVELS)
  strides = STRIDES[family(name)][px > 64]
  for i, (stride, c) in enumerate(zip(strides, channels)):
    assert feats[f"stage{i + 1}"].shape == (2, px // stride, px // stride, c)
  assert feats["pooled"].shape == (2, channels[-1])


@pytest.mark.parametrize("name", ["resnet50", "convnext_atto", "vit_ti"])
def test_bf16_compute_keeps_float32_params_and_logits(name):
  kw, _ = TINY[name]
  model, (logits, feats) = abstract_apply(name, 32, dtype=jnp.bfloat16, **kw)
  assert logits.dtype == jnp.float32
  assert {v.dtype for v in feats.values()} == {jnp.dtype(jnp.bfloat16)}
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert params and {p.dtype for p in params} == {jnp.dtype(jnp.float32)}


def test_unknown_model_name_lists_valid_names():
  with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18.*vit_s"):
    build("resnet19")


@pytest.mark.parametrize("name,kw,bad", [
    ("resnet18", dict(bogus=1), "bogus"),
    ("resnet18", dict(patch_size=4), "patch_size"),  # Valid for ViT only.
    ("convnext_atto", dict(width=0.1, dropout=0.1), "dropout"),
    ("vit_ti", dict(depths=(1, 1, 1, 1)), "depths"),
])
def test_unknown_option_is_named(name, kw, bad):
  with pytest.raises(TypeError, match=f"unknown option.*{bad}.*valid: .*width"):
    build(name, **kw)


@pytest.mark.parametrize("name,kw,msg", [
    ("vit_ti", dict(depth=6), "multiple of 4"),
    ("vit_s", dict(width=0.3), "heads .* must divide"),  # 115 wide, 2 heads.
    ("vit_ti", dict(patch_size=5), "patch_size 5 must divide"),
    ("convnext_atto", dict(depths=(1, 1)), "depths"),
    ("convnext_atto", dict(depthwise="fast"), "unknown depthwise 'fast'; valid: auto, shifts"),
    ("resnet18", dict(width=0), "width"),
])
def test_bad_option_values_raise(name, kw, msg):
  with pytest.raises(ValueError, match=msg):
    nnx.eval_shape(lambda: build(name, **kw))


def test_model_options_exposes_defaults():
  assert model_options("vit_ti") == dict(patch_size=None, width=1.0, depth=None, num_heads=None,
                                         dropout=0.0)
  assert model_options("resnet50") == dict(width=1.0, zero_init_residual=False)


def test_stochastic_layers_require_rngs_when_training():
  for name, kw in [("vit_ti", dict(width=0.1, depth=4, dropout=0.1)),
                   ("convnext_atto", dict(width=0.1, depths=(1, 1, 1, 1), drop_path=0.1))]:
    with pytest.raises(ValueError, match="needs rngs"):
      abstract_apply(name, 32, train=True, **kw)
    abstract_apply(name, 32, train=False, **kw)  # Inference needs no key.


# ---- Real (tiny, jitted) computations. ---------------------------------------------------------


def _x(px=32, seed=1):
  return jax.random.normal(jax.random.key(seed), (4, px, px, 3), jnp.float32)


@pytest.fixture(scope="module")
def resnet():
  kw, _ = TINY["resnet18"]
  return nnx.split(build("resnet18", **kw), nnx.Param, nnx.BatchStat)


@pytest.fixture(scope="module")
def vit():
  kw, _ = TINY["vit_ti"]
  return nnx.split(build("vit_ti", **kw), nnx.Param, nnx.BatchStat)


def test_batchnorm_train_updates_stats_eval_is_pure(resnet):
  graphdef, params, stats = resnet

  def apply(params, stats, x, train):
    model = nnx.merge(graphdef, params, stats)
    logits, _ = model(x, train=train)
    return logits, nnx.state(model, nnx.BatchStat)

  apply = jax.jit(apply, static_argnums=3)
  x = _x()
  before = jax.tree.leaves(stats)
  logits_t, stats_t = apply(params, stats, x, True)
  changed = [not np.array_equal(a, b) for a, b in zip(before, jax.tree.leaves(stats_t))]
  assert all(changed), "train=True must update every running mean/var"
  # Fresh BN stats are (0, 1); one step with momentum 0.9 moves them 10% toward the batch.
  mean0 = stats_t["stem_bn"]["mean"][...]
  conv = nnx.merge(graphdef, params, stats).stem_conv(x)
  np.testing.assert_allclose(mean0, 0.1 * conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)

  logits_e1, stats_e = apply(params, stats, x, False)
  logits_e2, _ = apply(params, stats, x, False)
  for a, b in zip(before, jax.tree.leaves(stats_e)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(logits_e1, logits_e2)
  assert not np.allclose(logits_e1, logits_t), "train must switch BN to batch statistics"


# ConvNeXt is left out only for time (its grad compiles slowly on CPU); its layer scale starts at
# 1e-6, so its gradients are small but not zero.
@pytest.mark.parametrize("fixture", ["resnet", "vit"])
def test_gradient_reaches_every_param(fixture, request):
  graphdef, params, stats = request.getfixturevalue(fixture)
  x, labels = _x(), jnp.arange(4) % NUM_CLASSES

  @jax.jit
  def grads(params, stats):
    def loss(params, stats):
      # copy=True: the merged BatchStats must belong to this (grad) trace to be updated.
      model = nnx.merge(graphdef, params, stats, copy=True)
      logits, feats = model(x, train=True, rngs=key(0))
      ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean()
      return ce, feats

    return jax.grad(loss, has_aux=True)(params, stats)

  g, feats = grads(params, stats)
  assert all(np.isfinite(v).all() for v in jax.tree.leaves(feats))
  # numpy, not jnp: an eager jnp op per parameter shape would compile dozens of tiny programs.
  dead = [".".join(map(str, path)) for path, v in nnx.to_flat_state(g)
          if not np.any(np.asarray(v[...]))]
  assert not dead, f"no gradient reaches {dead}"


def test_dropout_uses_call_rngs_and_only_in_training():
  kw, _ = TINY["vit_ti"]
  graphdef, params, stats = nnx.split(build("vit_ti", dropout=0.5, **kw), nnx.Param, nnx.BatchStat)

  def logits(params, key, train):
    return nnx.merge(graphdef, params, stats)(_x(), train=train, rngs=key)[0]

  logits = jax.jit(logits, static_argnums=2)
  a, b = (logits(params, key(s), True) for s in (0, 1))
  assert not np.allclose(a, b), "different dropout keys must give different outputs"
  np.testing.assert_array_equal(a, logits(params, key(0), True))
  e1, e2 = (logits(params, key(s), False) for s in (0, 1))
  np.testing.assert_array_equal(e1, e2)
  assert not np.allclose(a, e1), "train=True must enable dropout"


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
  x = jnp.ones((64, 2, 2, 3))
  y = np.asarray(drop_path(x, 0.5, train=True, rngs=rngs()))
  per_sample = y.reshape(64, -1)
  assert set(np.unique(per_sample)) == {0.0, 2.0}  # Dropped or rescaled by 1 / keep.
  assert (per_sample == per_sample[:, :1]).all(), "a sample is kept or dropped as a whole"
  assert 0 < (per_sample[:, 0] == 0).sum() < 64
  assert drop_path(x, 0.5, train=False, rngs=None) is x
