"""A stop signal saves within two steps however slow the device is: the loop dispatches at
most two steps ahead of the device (flaxlm/train/loop.py), so a preemption notice never waits for a
queue of steps the host ran ahead with."""

import os
import signal

import jax
import jax.numpy as jnp
import pytest

from flaxlm.config import default_config, from_config_dict
from flaxlm.pretraining import run as pretraining
from flaxlm.train import steps as training


@pytest.mark.slow  # CI runs it; the default suite stays under 15 minutes
def test_host_runs_at_most_two_steps_ahead_and_sigterm_saves_there(tmp_path, monkeypatch):
  """Each step carries ~7 GFLOP of extra matrix products, so the device is far slower than
  the host's dispatch (milliseconds). At every dispatch at most two earlier steps are still
  running; SIGTERM at the dispatch of step 6 saves step 6 with at most two steps to wait."""
  step_fn, in_flight, returned = training.train_step, [], []

  def busy_step(state, batch, **kwargs):
    state, metrics = step_fn(state, batch, **kwargs)
    x = jnp.full((256, 256), 1e-3, jnp.float32) * metrics["loss"]
    x = jax.lax.fori_loop(0, 100, lambda i, x: jnp.tanh(x @ x), x)
    return state, {**metrics, "busy": jnp.sum(x)}

  dispatch = training.Trainable.train_step  # a cached_property

  def counted(self):
    step = dispatch.__get__(self, training.Trainable)

    def call(state, batch):
      in_flight.append(sum(not m["busy"].is_ready() for m in returned))
      state, metrics = step(state, batch)
      returned.append(metrics)
      if len(returned) == 6:
        os.kill(os.getpid(), signal.SIGTERM)
      return state, metrics

    return call

  monkeypatch.setattr(training, "train_step", busy_step)
  monkeypatch.setattr(training.Trainable, "train_step", property(counted))
  c = default_config()
  c.model.update(num_layers=1, embed_dim=16, num_heads=2, mlp_dim=32, max_len=16)
  c.tokenizer.kind = "byte"
  c.update(seq_len=16, batch_size=8, eval_batch_size=8, eval_batches=1, num_train_steps=20,
           log_every=1000, eval_every=0, checkpoint_every=0, sample_tokens=0,
           data_dir=str(tmp_path / "tfds"))  # fmt: skip
  result = pretraining.train(from_config_dict(c), tmp_path / "workdir")
  assert (result["interrupted"], result["step"]) == (True, 6)
  assert max(in_flight) <= 2, in_flight
  assert 2 in in_flight[2:], in_flight  # the device was the slower one: the bound was reached
  assert os.listdir(tmp_path / "workdir" / "checkpoints") == ["6"]
