"""The PyTorch reference of benchmarks/throughput.py computes what our JAX code computes.

Its modules mirror ours name for name, so our initialised variables load into them and both
forwards must agree (outputs and every level); its parameter counts, losses and augmentation
match ours; every step runs and trains only what its stage trains. All tiny (width 1/8, 32 px,
a handful of images) and on one thread: a few seconds of one core.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_reference as ref  # noqa: E402
from mlfd_jax import modelfn  # noqa: E402
from mlfd_jax.data import augment  # noqa: E402
from mlfd_jax.distill import losses  # noqa: E402
from mlfd_jax.models import feature_space  # noqa: E402
from mlfd_jax.models.fusion import FusionHead  # noqa: E402

WIDTH, SIZE, CLASSES = 0.125, 32, 10


@pytest.fixture(autouse=True)
def one_thread():
  before = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(before)


def ours(name, size=SIZE):
  return modelfn.from_config({"name": name, "width": WIDTH}, num_classes=CLASSES,
                             image_size=size)


def our_fusion(model, level, num_teachers, dropout=0.2):
  shapes = modelfn.level_shapes(ours(model), SIZE)
  return modelfn.ModelFn(lambda rngs: FusionHead(
      teacher_widths=[shapes[level][-1]] * num_teachers, fusion_level=level,
      target_shapes=shapes, target_space=feature_space(model),
      num_classes=[CLASSES] * num_teachers, width=64, dropout=dropout, rngs=rngs))


def count(fn):
  # Shapes only: the count `init(key)['params']` would give, without computing an init.
  return sum(x.size for x in jax.tree.leaves(jax.eval_shape(fn.init, jax.random.key(0))
                                               ["params"]))


_LEAF = {"running_mean": "mean", "running_var": "var", "bias": "bias"}


def load_ours(module, variables) -> None:
  """Copies our variables into the torch module whose names mirror ours, checking that every
  one of our leaves found its tensor of the same shape and nothing was left over."""
  params, state = variables["params"], variables["model_state"]
  loaded = 0
  with torch.no_grad():
    for name, t in itertools.chain(module.named_parameters(), module.named_buffers()):
      *path, leaf = name.split(".")
      if leaf == "num_batches_tracked":
        continue
      tree = state if leaf in ("running_mean", "running_var") else params
      for k in path:
        tree = tree[int(k) if k.isdigit() else k]
      if leaf == "weight":
        leaf = "kernel" if "kernel" in tree else "scale"
      value = np.asarray(tree[_LEAF.get(leaf, leaf)])
      if leaf == "kernel":
        value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      assert value.shape == tuple(t.shape), name
      t.copy_(torch.from_numpy(np.array(value)))
      loaded += 1
  assert loaded == len(jax.tree.leaves(variables)), "our variables and theirs differ"


def nhwc(t):
  return t.detach().permute(0, 2, 3, 1).numpy() if t.ndim == 4 else t.detach().numpy()


def assert_close(a, b, what):
  np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=2e-3, atol=2e-3, err_msg=what)


# Same models -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_param_count_equals_ours(name):
  assert ref.param_count(name, WIDTH, CLASSES, SIZE) == count(ours(name))


def test_fusion_param_count_equals_ours():
  theirs = ref.build_fusion("resnet18", width=WIDTH, num_classes=CLASSES, image_size=SIZE,
                            num_teachers=3, fusion_level="stage3", joint_width=64)
  assert sum(p.numel() for p in theirs.parameters()) == count(our_fusion("resnet18", "stage3",
                                                                         3))


# resnet18 at 72 px: the ImageNet stem (7x7/2 conv, max-pool) and odd sizes at stride 2.
@pytest.mark.parametrize("name,size", [("resnet18", 72), ("resnet50", SIZE),
                                       ("convnext_atto", SIZE), ("vit_ti", SIZE)])
def test_forward_equals_ours_on_our_weights(name, size):
  """Train-mode forward (batch-statistics BatchNorm) of our initialised weights: logits and
  every level agree, so the architectures are the same, not just their sizes."""
  fn = ours(name, size)
  v = fn.init(jax.random.key(1))
  x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
  logits, feats, _ = fn.apply(v, jnp.asarray(x), train=True)
  model = ref.build_model(name, width=WIDTH, num_classes=CLASSES, image_size=size)
  load_ours(model, v)
  t_logits, t_feats = model.train()(torch.from_numpy(x).permute(0, 3, 1, 2))
  assert set(t_feats) == set(feats)
  for level in feats:
    assert_close(feats[level], nhwc(t_feats[level]), level)
  assert_close(logits, nhwc(t_logits), "logits")
  assert ref.level_shapes(name, width=WIDTH, num_classes=CLASSES, image_size=size) == \
      modelfn.level_shapes(fn, size)


@pytest.mark.parametrize("model,level", [("vit_ti", "stage1"), ("resnet18", "stage4")])
def test_fusion_head_equals_ours_on_our_weights(model, level):
  """Adaptors, merge, the deeper levels (ViT: stride 1), pooling and heads agree. At stride 2
  the deeper levels differ by a pixel shift (our 'SAME' pads (0, 1), theirs (1, 1)), so the
  ResNet case fuses at stage4, where there is no deeper level."""
  fn = our_fusion(model, level, 2, dropout=0.0)
  v = fn.init(jax.random.key(2))
  shape = modelfn.level_shapes(ours(model), SIZE)[level]
  maps = [np.random.default_rng(i).uniform(size=(4, *shape)).astype(np.float32)
          for i in range(2)]
  logits, feats, _ = fn.apply(v, [jnp.asarray(m) for m in maps], train=True)
  head = ref.build_fusion(model, width=WIDTH, num_classes=CLASSES, image_size=SIZE,
                          num_teachers=2, fusion_level=level, joint_width=64, dropout=0.0)
  load_ours(head, v)
  t_logits, t_feats = head.train()([torch.from_numpy(m).permute(0, 3, 1, 2) for m in maps])
  assert set(t_feats) == set(feats)
  for k in feats:
    assert_close(feats[k], nhwc(t_feats[k]), k)
  for a, b in zip(logits, t_logits, strict=True):
    assert_close(a, nhwc(b), "logits")


# Same losses and augmentation --------------------------------------------------------------
def test_losses_equal_ours():
  rng = np.random.default_rng(0)
  z_s, z_t = (rng.normal(size=(6, 5)).astype(np.float32) * 3 for _ in range(2))
  labels, ids = rng.integers(0, 5, 6), rng.integers(0, 2, 6)
  heads = [rng.normal(size=(6, 5)).astype(np.float32) for _ in range(2)]
  f_s, f_t = ({"stage4": rng.uniform(size=(6, 2, 3, 3)).astype(np.float32),
               "pooled": rng.uniform(size=(6, 3)).astype(np.float32)} for _ in range(2))
  T = torch.from_numpy
  np.testing.assert_allclose(float(ref.kd_kl(T(z_s), T(z_t))), losses.kd_kl(z_s, z_t, 2.0),
                             rtol=1e-5)
  np.testing.assert_allclose(
      float(ref.multihead_ce([T(h) for h in heads], T(labels), T(ids), 0.1)),
      losses.multihead_ce(heads, labels, ids, 0.1)[0], rtol=1e-5)
  ours_mlfd = (0.6 * losses.kd_kl(z_s, z_t, 2.0) + 0.2 * losses.cross_entropy(z_s, labels)
               + 0.2 * sum(losses.mse(f_s[k], f_t[k]) for k in f_s))
  theirs = ref.mlfd_loss((T(z_s), {k: T(v) for k, v in f_s.items()}),
                         (T(z_t), {k: T(v) for k, v in f_t.items()}), T(labels),
                         ("stage4", "pooled"))
  np.testing.assert_allclose(float(theirs), ours_mlfd, rtol=1e-5)


def test_augment_is_a_flipped_crop_of_the_padded_batch_normalised_like_ours():
  images = torch.randint(0, 256, (6, 8, 8, 3), dtype=torch.uint8)
  aug = ref.Augment(8, "cpu", torch.channels_last, pad=2)
  out = aug(images)
  assert out.shape == (6, 3, 8, 8) and out.is_contiguous(memory_format=torch.channels_last)
  padded = np.pad(images.numpy(), ((0, 0), (2, 2), (2, 2), (0, 0)))
  views = nhwc(out)
  for i in range(6):
    crops = [np.asarray(augment.normalize(c)) for dy in range(5) for dx in range(5)
             for c in (padded[i, dy:dy + 8, dx:dx + 8], padded[i, dy:dy + 8, dx:dx + 8][:, ::-1])]
    assert any(np.allclose(views[i], c, atol=1e-5) for c in crops), i


# Steps ---------------------------------------------------------------------------------------
def snapshot(module):
  return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module, kind):
  now = module.state_dict()
  names = [k for k in before if ("running" in k) == (kind == "stats")
           and "num_batches" not in k]
  return {k for k in names if not torch.equal(before[k], now[k])}, names


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_each_step_trains_its_model_and_leaves_the_frozen_ones_alone(dtype):
  r = ref.build(model="resnet18", width=WIDTH, batch=8, image_size=SIZE, num_teachers=2,
                num_classes=CLASSES, dtype=dtype, device="cpu")
  assert set(r.steps) == set(ref.STAGES)
  frozen = [snapshot(m) for m in r.frozen]
  for stage, step in r.steps.items():
    before = snapshot(r.trained[stage])
    step()
    params, names = changed(before, r.trained[stage], "params")
    stats, stat_names = changed(before, r.trained[stage], "stats")
    if stage == "eval":
      assert not params and not stats
    else:
      # Every parameter gets a gradient (or decays); train-mode BatchNorm moves its statistics.
      assert params == set(names), (stage, set(names) - params)
      assert stats == set(stat_names), stage
      assert all(p.dtype == torch.float32 for p in r.trained[stage].parameters())
    for m, b in zip(r.frozen, frozen):
      assert not any(changed(b, m, kind)[0] for kind in ("params", "stats")), stage


def test_unknown_model_names_the_supported_ones():
  with pytest.raises(ValueError, match="resnet18, resnet34, resnet50"):
    ref.make_steps(model="resnet101", width=WIDTH, batch=2, image_size=SIZE, num_teachers=2,
                   num_classes=CLASSES, dtype="float32", device="cpu")
