"""The multi-teacher methods beside MLFD: avg_kd, amtml, feed, feed_seq (and the probes they use)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlfd_jax import checkpoint, distill, modelfn
from mlfd_jax import main as mlfd_main
from mlfd_jax.config_lib import distill_block
from mlfd_jax.distill import amtml, feed
from mlfd_jax.stages import probes

RNG = np.random.default_rng(0)


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _softmax(z):
  return np.exp(_log_softmax(z))


def _kl_t2(q, zs, t):
  return t * t * np.mean(np.sum(q * (np.log(q) - _log_softmax(zs / t)), -1))


def _ce(zs, y):
  return -np.mean(_log_softmax(zs)[np.arange(len(y)), y])


def _teachers(k, b=2, classes=3):
  """k teachers' (logits, feats) and their level shapes."""
  outs = [(RNG.normal(size=(b, classes)),
           {"stage3": RNG.normal(size=(b, 4, 4, 6)), "stage4": RNG.normal(size=(b, 2, 2, 5)),
            "pooled": RNG.normal(size=(b, 5))}) for _ in range(k)]
  shapes = [{lv: v.shape[1:] for lv, v in f.items()} for _, f in outs]
  return outs, shapes


def _student(b=2, classes=3):
  feats = {"stage3": RNG.normal(size=(b, 2, 2, 3)), "stage4": RNG.normal(size=(b, 1, 1, 4)),
           "pooled": RNG.normal(size=(b, 4))}
  return RNG.normal(size=(b, classes)), feats, {lv: v.shape[1:] for lv, v in feats.items()}


def test_avg_kd_matches_a_hand_computed_value():
  teachers, shapes = _teachers(3)
  zs, fs, s_shapes = _student()
  y = np.array([1, 2])
  cfg = distill_block(method="avg_kd")
  m = distill.build_method(cfg, student_shapes=s_shapes, teacher_shapes=shapes,
                           total_steps=10)
  total, terms = m.loss(m.init(jax.random.key(0)), student=(zs, fs), teacher=teachers, labels=y)
  q = np.mean([_softmax(z / 2.0) for z, _ in teachers], 0)
  kd, ce = _kl_t2(q, zs, 2.0), _ce(zs, y)
  np.testing.assert_allclose(float(terms["kd"]), kd, rtol=1e-5)
  np.testing.assert_allclose(float(total), 0.6 * kd + 0.2 * ce, rtol=1e-5)


def test_amtml_weights_sum_to_one_follow_the_adaptor_and_the_loss_matches():
  teachers, shapes = _teachers(2)
  zs, fs, s_shapes = _student()
  y = np.array([0, 2])
  cfg = distill_block(method="amtml")
  m = distill.build_method(cfg, student_shapes=s_shapes, teacher_shapes=shapes, total_steps=10)
  p = m.init(jax.random.key(1))
  assert p["theta"].shape == (2, 4) and p["w"].shape == (4,)

  mu = np.asarray(amtml.teacher_weights(p, fs["stage4"]))
  np.testing.assert_allclose(mu.sum(-1), 1.0, rtol=1e-6)
  g = fs["stage4"].max(axis=(1, 2))
  scores = np.stack([(g * np.asarray(p["theta"][k])) @ np.asarray(p["w"]) for k in range(2)], 1)
  np.testing.assert_allclose(mu, _softmax(scores), rtol=1e-5)
  # The weights follow the adaptor: flipping W's sign flips which teacher dominates.
  flipped = np.asarray(amtml.teacher_weights({**p, "w": -p["w"]}, fs["stage4"]))
  np.testing.assert_array_equal(flipped.argmax(-1), 1 - mu.argmax(-1))

  total, terms = m.loss(p, student=(zs, fs), teacher=teachers, labels=y, step=jnp.int32(0))
  t = 5.0
  q = np.einsum("bk,bkc->bc", mu, np.stack([_softmax(z / t) for z, _ in teachers], 1))
  kd, ce = _kl_t2(q, zs, t), _ce(zs, y)

  def unit(x):
    return x / np.sqrt((x ** 2).sum(-1, keepdims=True))

  hint = 0.0
  for k, (_, ft) in enumerate(teachers):
    h = p["hints"]["stage3"][k]
    s = unit(fs["stage3"] @ np.asarray(h["kernel"]) + np.asarray(h["bias"]))
    tm = np.asarray(jax.image.resize(ft["stage3"], (2, 2, 2, 6), "bilinear", antialias=True))
    hint += np.mean((s - unit(tm)) ** 2)
  l2 = 0.5 * (np.sum(np.asarray(p["theta"]) ** 2) + np.sum(np.asarray(p["w"]) ** 2))
  # The official nn.KLDivLoss() (reduction 'mean') also divides by the 3 classes.
  np.testing.assert_allclose(float(terms["kd"]), kd / 3, rtol=1e-5)
  np.testing.assert_allclose(float(terms["hint"]), hint, rtol=1e-4)
  np.testing.assert_allclose(float(total), 2 * 0.7 * kd / 3 + 0.3 * ce + 1.0 * hint + 0.1 * l2,
                             rtol=1e-5)
  cfg.amtml.kd_reduction = "batchmean"
  per_image = distill.build_method(cfg, student_shapes=s_shapes, teacher_shapes=shapes,
                                   total_steps=10)
  _, terms_b = per_image.loss(p, student=(zs, fs), teacher=teachers, labels=y, step=jnp.int32(0))
  np.testing.assert_allclose(float(terms_b["kd"]), kd, rtol=1e-5)
  cfg.amtml.kd_reduction = "sum"
  with pytest.raises(ValueError, match=r"distill.amtml.kd_reduction='sum'; valid: mean, batchmean"):
    distill.build_method(cfg, student_shapes=s_shapes, teacher_shapes=shapes, total_steps=10)
  cfg.amtml.kd_reduction = "mean"

  # theta and W learn during the weighting phase (half the steps) and are frozen after it.
  def grad_theta(step):
    return jax.grad(lambda p: m.loss(p, student=(zs, fs), teacher=teachers, labels=y,
                                     step=jnp.int32(step))[0])(p)["theta"]
  assert float(jnp.abs(grad_theta(4)).sum()) > 0
  assert float(jnp.abs(grad_theta(5)).sum()) == 0
  # ... and their optimizer updates are zeroed too, so momentum and weight decay cannot move them.
  updates = jax.tree.map(jnp.ones_like, p)
  for step, moving in ((4, 1.0), (5, 0.0)):
    gated = m.gate_updates(updates, jnp.int32(step))
    assert float(jnp.min(gated["theta"])) == float(jnp.max(gated["w"])) == moving
    assert all(float(jnp.min(h)) == 1.0 for h in jax.tree.leaves(gated["hints"]))


def test_amtml_rkd_terms_are_zero_for_identical_geometry():
  from mlfd_jax.distill import losses
  x = jnp.asarray(RNG.normal(size=(5, 4)))
  assert float(losses.rkd_distance(x, 3.0 * x)) < 1e-8  # distances are mean-normalised
  assert float(losses.rkd_angle(x, 3.0 * x)) < 1e-8
  assert float(losses.rkd_angle(x, jnp.asarray(RNG.normal(size=(5, 4))))) > 1e-3


def test_feed_loss_matches_a_hand_computed_value():
  teachers, shapes = _teachers(2)
  zs, fs, s_shapes = _student()
  y = np.array([2, 0])
  cfg = distill_block(method="feed")
  m = distill.build_method(cfg, student_shapes=s_shapes, teacher_shapes=shapes,
                           total_steps=10)
  p = m.init(jax.random.key(2))
  assert len(p["transforms"]) == 2 and len(p["transforms"][0]) == 3  # 3 convs per teacher
  assert p["transforms"][1][0]["kernel"].shape == (3, 3, 4, 5)
  total, terms = m.loss(p, student=(zs, fs), teacher=teachers, labels=y)
  expected = 0.0
  for n, (_, ft) in enumerate(teachers):
    xs = np.asarray(feed.transform(p["transforms"][n], fs["stage4"])).reshape(2, -1)
    xt = np.asarray(jax.image.resize(ft["stage4"], (2, 1, 1, 5), "bilinear",
                                     antialias=True)).reshape(2, -1)
    xs = xs / np.linalg.norm(xs, axis=1, keepdims=True)
    xt = xt / np.linalg.norm(xt, axis=1, keepdims=True)
    expected += np.mean(np.abs(xs - xt))
  np.testing.assert_allclose(float(terms["feed"]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(total), _ce(zs, y) + 100.0 * expected, rtol=1e-5)


def test_feed_transform_is_three_convs_with_relus():
  layers = [feed.conv3x3_init(k, 2, 2) for k in jax.random.split(jax.random.key(0), 3)]
  x = jnp.asarray(RNG.normal(size=(1, 3, 3, 2)), jnp.float32)
  h = jax.nn.relu(feed.conv3x3(layers[0], x))
  h = jax.nn.relu(feed.conv3x3(layers[1], h))
  np.testing.assert_allclose(feed.transform(layers, x), feed.conv3x3(layers[2], h), rtol=1e-6)
  # conv3x3 is a SAME 3x3 correlation: the centre pixel of a 3x3 input sees all nine.
  k = layers[0]["kernel"]
  centre = np.einsum("hwc,hwcd->d", np.asarray(x[0]), np.asarray(k)) + np.asarray(layers[0]["bias"])
  np.testing.assert_allclose(feed.conv3x3(layers[0], x)[0, 1, 1], centre, rtol=1e-5)


def test_probe_fits_separable_features():
  x = RNG.normal(size=(300, 6)).astype(np.float32) * 5.0
  y = (x[:, 0] > 0).astype(np.int32) + 2 * (x[:, 1] > 0).astype(np.int32)
  probe = probes.fit_probe(x, y, 4, steps=300)
  acc = np.mean(np.argmax(x @ probe["kernel"] + probe["bias"], -1) == y)
  assert acc > 0.95


def test_probe_key_follows_the_teacher_and_the_settings():
  v = {"params": {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros((2,))}}}
  digest = probes.variables_digest(v)
  key = probes.probe_key(digest, examples=100, steps=300)
  same = jax.tree_util.tree_map(lambda x: x.copy(), v)
  assert probes.probe_key(probes.variables_digest(same), examples=100, steps=300) == key
  retrained = jax.tree_util.tree_map(lambda x: x, v)
  retrained["params"]["dense"]["bias"] = jnp.asarray([0.0, 1e-3])
  assert probes.probe_key(probes.variables_digest(retrained), examples=100, steps=300) != key
  assert probes.probe_key(digest, examples=100, steps=301) != key
  assert probes.probe_key(digest, examples=99, steps=300) != key


def test_a_saved_probe_is_reused_only_for_its_teacher(tmp_path):
  path = str(tmp_path / "probes" / "t" / "a.npz")
  probe = {"kernel": np.arange(6, dtype=np.float32).reshape(3, 2), "bias": np.ones(2, np.float32)}
  probes.save(path, probe, val_top1=0.5, meta={"key": "k1"})
  loaded = probes.load_saved(path, "k1", num_classes=2)
  np.testing.assert_array_equal(loaded["kernel"], probe["kernel"])
  assert probes.load_saved(path, "k2", num_classes=2) is None  # the teacher was retrained
  assert probes.load_saved(path, "k1", num_classes=3) is None  # another label space
  assert probes.load_saved(str(tmp_path / "none.npz"), "k1", num_classes=2) is None
  np.savez(path, kernel=probe["kernel"], bias=probe["bias"])  # a probe saved without a key
  assert probes.load_saved(path, "k1", num_classes=2) is None


def test_same_data_compares_dataset_blocks():
  from configs import cifar10_same, digits
  c = cifar10_same.get_config()
  assert probes.same_data(c, "cifar10_resnet18", "cifar10_vit")
  d = digits.get_config("tiny")
  assert not probes.same_data(d, "digits_a", "digits_b")


# End to end on the tiny digits demo ---------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  """Teachers and joint teacher of the tiny digits demo, shared by the method runs below."""
  from configs import digits
  workdir = tmp_path_factory.mktemp("digits_methods")
  c = digits.get_config("tiny")
  c.student_datasets = "digits_b"
  mlfd_main.run(c, str(workdir), "configs/digits.py:tiny")
  return workdir


def _paths(tree):
  """Leaf paths as strings (an untargeted restore turns int keys into str)."""
  return sorted("/".join(str(getattr(k, "key", k)) for k in path)
                for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0])


def _run_method(workdir, method, **distill_overrides):
  from configs import digits
  c = digits.get_config("tiny")
  c.stage, c.student_datasets, c.distill.method = "students", "digits_b", method
  c.distill.update(distill_overrides)
  mlfd_main.run(c, str(workdir), "configs/digits.py:tiny")
  return json.loads((workdir / "results.json").read_text())["datasets"]


@pytest.mark.parametrize("method", ["avg_kd", "amtml", "feed"])
def test_method_end_to_end_on_the_digits_demo(demo, method):
  # FEED reads only the teachers' maps: it must run with the probes turned off.
  res = _run_method(demo, method, **({"probe_steps": 0} if method == "feed" else {}))
  entry = res["digits_b"][f"student_{method}"]
  assert 0.0 <= entry["test_top1"] <= 1.0 and entry["name"] == method
  assert "student" in res["digits_b"] and f"student_{method}" not in res["digits_a"]
  # Teachers of the other digit subsets were given linear probes on digits_b.
  assert sorted(p.name for p in (demo / "probes" / "digits_b").iterdir()) == \
      ["digits_a.npz", "digits_c.npz"]
  ckpt = demo / f"students_{method}" / "digits_b"
  ckpts = checkpoint.Checkpoints(str(ckpt), read_only=True)
  try:
    params = ckpts.restore_model(ckpts.latest_step(), None)["params"]
  finally:
    ckpts.close()
  # The exported student is a plain model: its params have the teacher architecture's tree;
  # FEED's transformations (and AMTML's theta/W/hints) live apart, under `method`.
  from configs import digits
  c = digits.get_config("tiny")
  plain = modelfn.from_config(dict(c.teachers.digits_b), num_classes=3, image_size=16)
  plain_params = jax.eval_shape(plain.init, jax.random.key(0))["params"]
  assert _paths(params["student"]) == _paths(plain_params)
  if method == "feed":
    assert len(params["method"]["transforms"]) == 3
  if method == "amtml":
    assert set(params["method"]) == {"theta", "w", "hints"}


def test_feed_seq_trains_generations(demo):
  res = _run_method(demo, "feed_seq")["digits_b"]
  assert res["student_feed_seq"]["generation"] == 1
  assert res["student_feed_seq_gen0"]["generation"] == 0
  assert (demo / "students_feed_seq" / "gen0" / "digits_b").is_dir()
  assert (demo / "students_feed_seq" / "gen1" / "digits_b").is_dir()


def test_methods_refuse_what_they_cannot_do(demo):
  with pytest.raises(ValueError, match=r"'avg_kd' needs the logits of the teacher of 'digits_a'.*probe_steps=0"):
    _run_method(demo, "avg_kd", name="no_probes", probe_steps=0)
  with pytest.raises(ValueError, match=r"distill.amtml.hint_levels has 'stage7'.*valid: stage1"):
    _run_method(demo, "amtml", name="bad_hints", amtml={"hint_levels": "stage7"})
  with pytest.raises(ValueError, match=r"unknown distillation method 'fitnet'.*amtml"):
    _run_method(demo, "fitnet")


def test_joint_teacher_methods_share_one_workdir_and_report_side_by_side(demo, tmp_path):
  from mlfd_jax import report
  frozen = {p: p.stat().st_mtime_ns for d in ("teachers", "joint") for p in (demo / d).rglob("*")
            if p.is_file()}
  for method in ("kd", "mlfd_last"):
    res = _run_method(demo, method)["digits_b"]
    assert res[f"student_{method}"]["method"] == method
  assert (demo / "students_kd" / "digits_b").is_dir()
  assert (demo / "students_mlfd_last" / "digits_b").is_dir()
  # The teachers and the joint teacher were reused, not retrained.
  assert {p: p.stat().st_mtime_ns for d in ("teachers", "joint") for p in (demo / d).rglob("*")
          if p.is_file()} == frozen
  md = open(report.write_report([str(demo)], str(tmp_path / "r"))["md"]).read()
  header = next(line for line in md.splitlines() if line.startswith("| dataset"))
  assert header.index("kd") < header.index("mlfd_last") < header.index("| mlfd |")
