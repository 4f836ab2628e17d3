"""Pruning (flaxlm/train/pruning.py): masks of the stated sparsity (exactly n of every m along
the input axis for n:m), Zhu & Gupta's schedule, and, through finetune.py as a user runs it,
pruned weights that stay zero through training, a resume and export, on one device and on a
2x2x2 emulated mesh alike."""

import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from samples import SIX_STEPS, padding_free_bert

from flaxlm.errors import ConfigError
from flaxlm.nn import pruning
from flaxlm.nn.pruning import Kernel, PruneConfig


def test_n_m_masks_keep_exactly_n_of_every_m_inputs():
  rng = np.random.default_rng(0)
  for names, shape in [
    (("embed", "mlp"), (8, 6)),  # a dense kernel: (in, out)
    (("heads", "head_dim", "embed"), (2, 4, 6)),  # attention's output: inputs (heads, head_dim)
    (("layers", "embed", "heads", "head_dim"), (3, 8, 2, 3)),  # a scanned stack of queries
  ]:
    layout = Kernel.of(names)
    w = jnp.asarray(rng.normal(size=shape), jnp.float32)
    mask = np.asarray(pruning.n_m_mask(w, layout, 2, 4))
    mats = np.asarray(layout.matrices(jnp.asarray(mask)))  # (layers, in, out)
    groups = mats.reshape(mats.shape[0], -1, 4, mats.shape[-1]).sum(axis=2)
    assert (groups == 2).all(), names
    kept = np.asarray(layout.matrices(jnp.abs(w)))[mats]  # and they are each group's largest
    dropped = np.asarray(layout.matrices(jnp.abs(w)))[~mats]
    assert kept.mean() > dropped.mean()


def test_magnitude_masks_hold_the_stated_sparsity():
  rng = np.random.default_rng(1)
  kernels = {
    ("a",): jnp.asarray(rng.normal(size=(10, 10))),
    ("b",): jnp.asarray(rng.normal(size=(30, 3)) * 5),
  }
  layouts = {p: Kernel.of(("embed", "mlp")) for p in kernels}
  per_layer = pruning.magnitude_masks(kernels, layouts, 0.7)
  assert [int((~m).sum()) for m in per_layer.values()] == [70, 63]
  glob = pruning.global_magnitude_masks(kernels, 0.7)
  assert sum(int((~m).sum()) for m in glob.values()) == int(0.7 * 190)
  assert (~glob[("b",)]).mean() < (~glob[("a",)]).mean()  # the larger weights keep more
  threshold = max(float(jnp.abs(kernels[p])[~m].max()) for p, m in glob.items())
  assert all(float(jnp.abs(kernels[p])[m].min()) >= threshold for p, m in glob.items())


def test_schedule_is_zhu_and_gupta_cubic():
  c = PruneConfig(
    method="magnitude", sparsity=0.8, initial_sparsity=0.0, start_step=10, end_step=30
  )
  got = [float(pruning.sparsity_at(c, s)) for s in (0, 10, 20, 30, 100)]
  np.testing.assert_allclose(got, [0.0, 0.0, 0.8 * (1 - 0.5**3), 0.8, 0.8], rtol=1e-6)
  assert PruneConfig(method="magnitude", sparsity=0.5).resolved(300).end_step == 200


@pytest.mark.parametrize(
  "keys, message",
  [
    ({"method": "random"}, "prune.method='random'"),
    ({"method": "magnitude", "sparsity": 1.0}, "prune.sparsity=1.0 must be in [0, 1)"),
    ({"method": "n_m", "n_m": "4:2"}, "prune.n_m='4:2'"),
    ({"method": "magnitude", "start_step": 50, "end_step": 10}, "comes before prune.start_step"),
  ],
)
def test_bad_prune_settings_fail_in_one_line(keys, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    PruneConfig(**keys)


# The small padding-free BERT of samples.py (2 blocks), pruned globally to 50% over steps 0-4.
PRUNED = [*SIX_STEPS, "--config.prune.method=global_magnitude", "--config.prune.sparsity=0.5",
          "--config.prune.start_step=0", "--config.prune.end_step=4", "--config.prune.every=2"]  # fmt: skip


def _kernels(workdir, exported=None) -> dict:
  from flax import traverse_util

  from flaxlm.finetuning import load as finetuned

  model = finetuned.load(workdir)
  flat = traverse_util.flatten_dict(jax.device_get(model.params))
  boxed = jax.eval_shape(model.trainable.init_params, jax.random.PRNGKey(0))
  paths = pruning.targets(PruneConfig(method="global_magnitude"), boxed, model.task.layout.is_head)
  return {p: np.asarray(flat[p]) for p in paths}


@pytest.mark.slow
def test_pruned_finetuning_holds_its_masks_through_resume_export_and_a_sharded_mesh(
  scripts, tmp_path
):
  args = [*padding_free_bert(tmp_path, layers=2), *PRUNED]
  one, mesh = tmp_path / "one", tmp_path / "mesh"
  done = scripts.run("finetune.py", f"--workdir={one}", *args, tiny=False)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads((one / "sparsity.json").read_text())
  assert report["total"] == pytest.approx(0.5, abs=1e-3)
  assert len(report["layers"]) == 2 * 6 + 1  # q, k, v, out, wi, wo of 2 blocks; the pooler
  kernels = _kernels(one)
  zeros = sum(int((w == 0).sum()) for w in kernels.values())
  assert zeros == int(0.5 * sum(w.size for w in kernels.values()))

  done = scripts.run("finetune.py", f"--workdir={mesh}", *args, "--config.mesh.data=2",
                     "--config.mesh.fsdp=2", "--config.mesh.tensor=2", devices=8, tiny=False)  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  for p, w in _kernels(mesh).items():  # the same masks, the same weights
    np.testing.assert_array_equal(w == 0, kernels[p] == 0, err_msg="/".join(p))
    np.testing.assert_allclose(w, kernels[p], atol=1e-5)

  # Resumed for 4 more steps (the masks come back from the checkpoint's optimizer state).
  done = scripts.run("finetune.py", f"--workdir={one}", *args, "--config.num_train_steps=10",
                     "--config.eval_every=10", tiny=False)  # fmt: skip
  assert done.returncode == 0 and "resumed from step 6" in done.stderr, done.stderr[-3000:]
  assert json.loads((one / "sparsity.json").read_text())["total"] == pytest.approx(0.5, abs=1e-3)
  shutil.rmtree(one / "best")  # the best checkpoint may be step 6's: read step 10's
  resumed = _kernels(one)
  for p, w in resumed.items():
    assert (w[kernels[p] == 0] == 0).all(), "/".join(p)
    assert not np.array_equal(w, kernels[p])  # and trained on

  # A changed method would reinterpret the saved masks: refused.
  done = scripts.run(
    "finetune.py", f"--workdir={one}", *args, "--config.prune.method=n_m", tiny=False
  )
  assert done.returncode != 0 and "prune" in done.stderr.strip().splitlines()[-1]

  # Export writes the zeros: transformers reads a model with the same sparsity.
  out = scripts.run(("-m", "flaxlm.convert", "export", str(one), str(tmp_path / "hf")), tiny=False)
  assert out.returncode == 0, out.stderr[-3000:]
  from safetensors.numpy import load_file

  tensors = load_file(tmp_path / "hf" / "model.safetensors")
  linear = [
    v
    for k, v in tensors.items()
    if k.endswith("dense.weight") or k.endswith(("query.weight", "key.weight", "value.weight"))
  ]
  exported_zeros = sum(int((v == 0).sum()) for v in linear)
  assert exported_zeros == sum(int((w == 0).sum()) for w in resumed.values())
