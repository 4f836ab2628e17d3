"""Every test runs on CPU with 8 emulated devices, so sharded code paths are exercised.

Compiling dominates this suite (XLA:CPU takes seconds per program), so every test, and every
train.py / finetune.py process a test starts, shares one persistent compilation cache: a
program compiled once (the same model, shapes and mesh) is loaded from it afterwards."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# pytest-xdist's workers inherit this environment from the controller, so all of them share
# the controller's cache; only the controller removes it at the end.
COMPILE_CACHE = os.environ.get("FLAXLM_TEST_XLA_CACHE") or tempfile.mkdtemp(
  prefix="flaxlm_test_xla_cache_"
)
os.environ.update(
  FLAXLM_TEST_XLA_CACHE=COMPILE_CACHE,
  JAX_COMPILATION_CACHE_DIR=COMPILE_CACHE,
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
)

import dataclasses  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
  skip = pytest.mark.skip(
    reason=f"needs {SHARED_DATA} (the shared data folder beside the checkout)"
  )
  for item in items:
    if "shared_data" in item.keywords and not SHARED_DATA.exists():
      item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
  """Tiny Hugging Face models, each built and saved on first use (tests/hf_tiny.py; torch)."""
  import hf_tiny

  return hf_tiny.TinyHF(tmp_path_factory.mktemp("tiny_hf"))


@pytest.fixture
def tfds_dir(tmp_path_factory):
  """A TFDS cache shared by the tests of one session (building python-docs takes ~1 s)."""
  return str(tmp_path_factory.getbasetemp() / "tfds")


@dataclasses.dataclass
class Finished:
  """A process that ran to its end (`Scripts.start` ones, read back from their log files)."""

  returncode: int
  stdout: str
  stderr: str


class Scripts:
  """Runs train.py / generate.py as a user would: a subprocess in the repository root.

  `devices` emulated CPU devices per process (the conftest's 8 are for in-process tests). The
  runs share one TFDS cache and one persistent XLA compilation cache, so only the first run
  of each model shape pays for compiling (XLA:CPU takes seconds per program here)."""

  # A 1-layer, 32-wide byte-level GPT: a step takes milliseconds.
  TINY = (
    "--config=configs/gpt_tiny.py",
    "--config.tokenizer.kind=byte",
    "--config.model.num_layers=1",
    "--config.model.embed_dim=32",
    "--config.model.num_heads=2",
    "--config.model.mlp_dim=64",
    "--config.seq_len=32",
    "--config.batch_size=8",
    "--config.eval_batches=1",
    "--config.eval_batch_size=8",
    "--config.sample_tokens=0",
    "--config.log_every=1",
  )

  def __init__(self, data_dir: str, compile_cache: str):
    self.data_dir, self.compile_cache = data_dir, compile_cache

  def env(self, devices: int | None = 1) -> dict:
    """None leaves the device count to the run (config.cpu_devices)."""
    env = dict(os.environ)
    env.update(
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}" if devices else "",
      JAX_PLATFORMS="cpu",
      JAX_COMPILATION_CACHE_DIR=self.compile_cache,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
      TF_CPP_MIN_LOG_LEVEL="2",
    )
    return env

  def args(self, script: str | tuple, *args: str, tiny: bool = True) -> list[str]:
    """`script` is a path, or a tuple of interpreter arguments such as ('-c', code)."""
    extra = (*self.TINY, f"--config.data_dir={self.data_dir}") if tiny else ()
    script = (script,) if isinstance(script, str) else tuple(script)
    return [sys.executable, *script, *extra, *args]

  def start(self, script: str | tuple, *args: str, devices: int = 1, tiny: bool = True, **kw):
    """A running process (stdout and stderr to pipes unless given)."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
      self.args(script, *args, tiny=tiny), cwd=REPO, env=self.env(devices), text=True, **kw
    )

  def run_all(self, jobs: dict, logs: pathlib.Path, at_once: int = 2, timeout: int = 900) -> dict:
    """name -> Finished for `jobs` (name -> (script, args, start keywords)), `at_once` at a
    time: each process spends most of its time compiling on one thread, so two overlap on
    2 cores. Output goes through files in `logs` (pipes could fill and block)."""
    out, running, queue = {}, [], list(jobs)
    while queue or running:
      while queue and len(running) < at_once:
        name = queue.pop(0)
        script, args, kw = jobs[name]
        files = [open(logs / f"{name}.{s}", "w+") for s in ("out", "err")]
        proc = self.start(script, *args, stdout=files[0], stderr=files[1], **kw)
        running.append((name, proc, files))
      name, proc, files = running.pop(0)
      proc.wait(timeout=timeout)
      for f in files:
        f.seek(0)
      out[name] = Finished(proc.returncode, files[0].read(), files[1].read())
      for f in files:
        f.close()
    return out

  def run(
    self, script: str | tuple, *args: str, devices: int = 1, tiny: bool = True, timeout: int = 300
  ):
    """The finished process (`returncode`, `stdout`, `stderr`)."""
    return subprocess.run(
      self.args(script, *args, tiny=tiny),
      cwd=REPO,
      env=self.env(devices),
      capture_output=True,
      text=True,
      timeout=timeout,
    )


@pytest.fixture(scope="session")
def scripts(tmp_path_factory) -> Scripts:
  base = tmp_path_factory.getbasetemp()
  return Scripts(str(base / "tfds"), COMPILE_CACHE)


def pytest_sessionfinish(session, exitstatus):
  import shutil

  if hasattr(session.config, "workerinput"):  # an xdist worker: others still use the cache
    return
  shutil.rmtree(COMPILE_CACHE, ignore_errors=True)


# What CI allows each part (README, Tests): the default suite 10 minutes, the whole of .ci/run
# 45. Not a timed test (this machine's speed varies by the hour and between sessions): a line
# in the report that says where the run stands, beside --durations' slowest tests.
BUDGET_S = {"not slow": 600, "slow": 1800}
_STARTED = []


def pytest_sessionstart(session):
  import time

  _STARTED.append(time.monotonic())


def pytest_terminal_summary(terminalreporter, exitstatus, config):
  import os
  import time

  marks = config.getoption("markexpr") or ""
  budget = BUDGET_S.get(marks.strip())
  if not budget or not _STARTED:
    return
  took = time.monotonic() - _STARTED[0]
  cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?") if os.path.exists("/proc/cpuinfo") else "?"  # fmt: skip
  terminalreporter.write_line(
    f"flaxlm test budget: -m '{marks}' took {took:.0f} s of its {budget} s "
    f"({100 * took / budget:.0f}%) on {os.cpu_count()} x {cpu}"
  )


def sgd_steps_on_mesh(
  model, loss, batch: dict, axes: tuple[int, int, int], steps: int = 3, init_batch=None
):
  """(losses, params) of `steps` SGD train steps of `model` under objective `loss` on a
  (data, fsdp, tensor) mesh of `axes` over the emulated devices. The model is initialized on
  token ids (1, 8), or on `init_batch` (a dict, for task models).

  SGD, not Adam: Adam's m / sqrt(v) turns float reassociation in near-zero gradients into
  lr-sized differences between layouts, which would hide real ones."""
  import jax
  import numpy as np
  import optax

  from flaxlm.nn import sharding
  from flaxlm.train.steps import StepConfig, Trainable, token_init

  mesh = sharding.make_mesh(
    dict(zip(sharding.MESH_AXES, axes, strict=True)), jax.devices()[: int(np.prod(axes))]
  )
  trainable = Trainable(
    model=model,
    optimizer=optax.sgd(0.5),
    schedule=optax.constant_schedule(0.5),
    mesh=mesh,
    rules=sharding.DEFAULT_RULES,
    loss=loss,
    step_config=StepConfig(),
    init_params=token_init(model, 1, 8)
    if init_batch is None
    else (lambda rng: model.init(rng, init_batch)["params"]),
  )
  state = trainable.init_state(seed=0)
  losses = []
  for _ in range(steps):
    state, m = trainable.train_step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
    losses.append(float(m["loss"]))
  return losses, jax.device_get(state.params)


@pytest.fixture
def sharded_equals_single_device():
  """fn(model, loss, batch, axes): asserts that SGD steps on the `axes` mesh give the losses
  and parameters of the 1-device steps, and that the loss falls."""
  import jax
  import numpy as np

  def check(model, loss, batch, axes, init_batch=None):
    want_losses, want = sgd_steps_on_mesh(model, loss, batch, (1, 1, 1), init_batch=init_batch)
    got_losses, got = sgd_steps_on_mesh(model, loss, batch, axes, init_batch=init_batch)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
    assert want_losses[-1] < want_losses[0]  # and it learns

  return check
