"""Distillation (flaxlm/finetuning/distill.py): the loss by hand (T^2 x KL + hard), and through
finetune.py as a user runs it: a student cut from its teacher's every k-th block, the teacher
frozen without optimizer state and unchanged, the same student on one device and on a 2x2x2
emulated mesh, a resume that checks the teacher, and evaluate and export of the student."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from samples import SIX_STEPS, good_bad_data, padding_free_bert

from flaxlm.config.finetuning import DistillConfig
from flaxlm.errors import ConfigError, DataNotFoundError
from flaxlm.finetuning import distill
from flaxlm.nn import losses


class _LinearTask:
  """A task stand-in: logits = x @ w (per example), cross-entropy on integer labels."""

  name = "classification"

  def forward(self, model, params, batch, rng, deterministic, capture=None):
    return batch["x"] @ params["w"]

  def loss_from_logits(self, logits, batch, loss_config):
    w = batch["example_weight"]
    return losses.cross_entropy(logits[:, None], batch["labels"][:, None], w[:, None], 0.0)

  def soft_target_weights(self, batch):
    return batch["example_weight"]

  def loss(self, model, params, batch, rng, deterministic, loss_config):
    return self.loss_from_logits(
      self.forward(model, params, batch, rng, deterministic), batch, None
    )


def test_distillation_loss_is_temperature_squared_kl_plus_the_hard_loss():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 3)).astype(np.float32)
  student_w, teacher_w = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
  batch = {
    "x": x,
    "labels": np.array([0, 4, 2, 1]),
    "example_weight": np.array([1, 1, 0, 1], np.float32),
  }

  class Teacher:
    pass

  task = _LinearTask()
  config = DistillConfig(teacher="t", temperature=3.0, alpha=0.7)
  params = {
    "w": jnp.asarray(student_w, jnp.float32),
    "teacher": {"w": jnp.asarray(teacher_w, jnp.float32)},
  }
  sums = distill.loss(task, Teacher(), config)(None, params, batch, None, False, None)

  def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))

  s, t = x @ student_w, x @ teacher_w
  pt = np.exp(log_softmax(t / 3.0))
  kl = (pt * (log_softmax(t / 3.0) - log_softmax(s / 3.0))).sum(-1)
  soft = 9.0 * (kl * batch["example_weight"]).sum()
  hard = -(log_softmax(s)[np.arange(4), batch["labels"]] * batch["example_weight"]).sum()
  np.testing.assert_allclose(float(sums["loss_sum"]), 0.7 * soft + 0.3 * hard, rtol=1e-5)
  assert float(sums["weight_sum"]) == 3.0
  # Evaluation scores the student alone, with the task's own loss.
  eval_sums = distill.loss(task, Teacher(), config)(None, params, batch, None, True, None)
  np.testing.assert_allclose(float(eval_sums["loss_sum"]), hard, rtol=1e-5)


def test_hidden_state_transfer_is_the_token_mean_squared_difference_of_matched_blocks():
  rng = np.random.default_rng(0)
  student = {i: jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32) for i in range(2)}
  teacher = {i: jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32) for i in range(6)}
  tokens = np.array([[1, 1, 0], [2, 0, 0]])  # 3 real tokens
  want = np.mean([
    ((np.asarray(student[i]) - np.asarray(teacher[t])) ** 2).sum(-1)[tokens > 0].sum() / (3 * 4)
    for i, t in enumerate([2, 5])
  ])  # fmt: skip
  got = distill.hidden_mse(student, teacher, [2, 5], tokens)
  np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_student_layers_are_every_kth_block_of_the_teacher():
  assert distill.chosen_layers(6, 2) == [2, 5]
  assert distill.chosen_layers(12, 6) == [1, 3, 5, 7, 9, 11]
  teacher = {
    "backbone": {f"layers_{i}": {"w": np.full((2,), i)} for i in range(6)}
    | {"embed": {"e": np.ones(3)}},
    "classifier": {"kernel": np.zeros((4, 2))},
  }
  got = distill.student_init(teacher, 6, 3)  # k = 2: layers 1, 3, 5
  assert sorted(got) == sorted([("backbone", f"layers_{i}", "w") for i in range(3)]
                               + [("backbone", "embed", "e"), ("classifier", "kernel")])  # fmt: skip
  assert [int(got[("backbone", f"layers_{i}", "w")][0]) for i in range(3)] == [1, 3, 5]
  stacked = {"backbone": {"layers": {"w": np.arange(6)[:, None] * np.ones((6, 2))}}}
  got = distill.student_init(stacked, 6, 2)  # a scanned stack: sliced
  np.testing.assert_array_equal(got[("backbone", "layers", "w")][:, 0], [2, 5])


def test_bad_distillation_settings_fail_in_one_line(tmp_path):
  with pytest.raises(ConfigError, match="distill.alpha=1.5"):
    DistillConfig(teacher="t", alpha=1.5)
  with pytest.raises(ConfigError, match="set distill.teacher"):
    DistillConfig(student_layers=2)
  from flaxlm.finetuning import run

  with pytest.raises(DataNotFoundError, match="create it with: python finetune.py --config=x"):
    run._teacher(
      DistillConfig(teacher=str(tmp_path), teacher_command="python finetune.py --config=x"), None
    )


@pytest.mark.slow
def test_distilled_student_trains_beside_a_frozen_teacher_on_one_device_and_a_mesh(
  scripts, tmp_path
):
  from flaxlm.config.finetuning import from_config_dict
  from flaxlm.finetuning import load as finetuned
  from flaxlm.finetuning import run as finetuning
  from flaxlm.nn import sharding

  args = [*padding_free_bert(tmp_path, layers=2), *SIX_STEPS]  # the teacher: 2 blocks
  data = good_bad_data(tmp_path)[0].split("=", 1)[1]
  teacher = tmp_path / "teacher"
  done = scripts.run("finetune.py", f"--workdir={teacher}", *args, tiny=False)
  assert done.returncode == 0, done.stderr[-3000:]
  student_args = [*args, f"--config.distill.teacher={teacher}", "--config.distill.student_layers=1",
                  "--config.distill.temperature=2", "--config.distill.alpha=0.5",
                  "--config.distill.hidden_weight=1"]  # fmt: skip
  one, mesh = tmp_path / "one", tmp_path / "mesh"
  jobs = {
    "one": ("finetune.py", [f"--workdir={one}", *student_args], {"tiny": False}),
    "mesh": ("finetune.py", [f"--workdir={mesh}", *student_args, "--config.mesh.data=2",
                             "--config.mesh.fsdp=2", "--config.mesh.tensor=2"], {"tiny": False, "devices": 8}),
  }  # fmt: skip
  for name, done in scripts.run_all(jobs, tmp_path).items():
    assert done.returncode == 0, (name, done.stderr[-3000:])
  a, b = (traverse_util.flatten_dict(jax.device_get(finetuned.load(w).params)) for w in (one, mesh))
  assert not any(k[0] == "teacher" for k in a)  # the checkpoint holds the student alone
  assert sum("layers_1" in k for k in a) == 0 and sum("layers_0" in k for k in a) > 0
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=2e-5, err_msg="/".join(k))

  # In the step, the teacher is frozen: no optimizer state, unchanged, its fingerprint recorded.
  teacher_model = finetuned.load(teacher)
  ft = from_config_dict(_config_of(tmp_path, teacher))
  m = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  prepared = finetuning.prepare(ft, None, m)
  student = prepared.overrides  # every k-th block: the teacher's layers_1 as the student's layers_0
  tflat = traverse_util.flatten_dict(jax.device_get(teacher_model.params))
  for k, v in tflat.items():
    if "layers_1" in k:
      np.testing.assert_array_equal(student[tuple(p.replace("layers_1", "layers_0") for p in k)], v)
  trainable = finetuning.build(
    prepared.task, prepared.family, prepared.model_config, prepared.ft, m, prepared.teacher
  )
  assert trainable.frozen_paths == {("teacher", *k) for k in tflat}
  opt = sum(x.size for x in jax.tree.leaves(trainable.abstract_state.opt_state))
  trained = trainable.num_trainable
  assert opt <= 2 * trained + 8  # Adam's two moments of the student's parameters only
  overrides = {**student, **distill.teacher_overrides(prepared.teacher)}
  state = trainable.init_state(0, overrides)
  before = jax.device_get(state.params)
  rows = finetuning.training_rows(prepared.task, prepared.examples, 8, 0, 32)
  for i in range(2):
    state, metrics = trainable.train_step(state, rows[i])
    assert bool(metrics["finite"])
  after = jax.device_get(state.params)
  for k, v in traverse_util.flatten_dict(before["teacher"]).items():
    np.testing.assert_array_equal(traverse_util.flatten_dict(after["teacher"])[k], v)
    np.testing.assert_array_equal(tflat[k], v)  # the teacher's own weights
  moved = lambda t: traverse_util.flatten_dict({k: v for k, v in t.items() if k != "teacher"})
  assert any(not np.array_equal(v, moved(after)[k]) for k, v in moved(before).items())

  # A resume checks the teacher (its fingerprint) and goes on; evaluate and export read the student.
  done = scripts.run(
    "finetune.py", f"--workdir={one}", *student_args, "--config.num_train_steps=8", tiny=False
  )
  assert done.returncode == 0 and "resumed from step 6" in done.stderr, done.stderr[-3000:]
  done = scripts.run(
    "finetune.py", f"--workdir={one}", "--mode=evaluate", f"--eval_data={data}", tiny=False
  )
  assert done.returncode == 0 and "eval_accuracy" in done.stdout, done.stderr[-3000:]
  out = scripts.run(("-m", "flaxlm.convert", "export", str(one), str(tmp_path / "hf")), tiny=False)
  assert out.returncode == 0, out.stderr[-3000:]
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert config["num_hidden_layers"] == 1
  # bench/compressed_models.py reads both workdirs: the student is the smaller of the two.
  out = scripts.run("bench/compressed_models.py", f"--eval_data={data}", "--rounds=1",
                    str(teacher), str(one), tiny=False)  # fmt: skip
  assert out.returncode == 0, out.stderr[-3000:]
  models = json.loads(out.stdout.strip().splitlines()[-1])["models"]
  assert models[str(one)]["parameters"] < models[str(teacher)]["parameters"]
  assert all(m["examples_per_s"] > 0 and 0 <= m["eval_accuracy"] <= 1 for m in models.values())


def _config_of(tmp_path, teacher):
  """The student's config as finetune.py reads it from `args`."""
  import runpy

  c = runpy.run_path(str(tmp_path / "bert2.py"))["get_config"]()
  c.train_data = c.eval_data = good_bad_data(tmp_path)[0].split("=", 1)[1]
  c.columns.text = "text"
  c.distill.update(teacher=str(teacher), student_layers=1)
  return c
