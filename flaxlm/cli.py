"""Command-line plumbing shared by train.py, finetune.py and generate.py: config flags with
clean errors, logging, and multi-host start-up through `jax.distributed`."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys

from absl import app, flags

from flaxlm.errors import ConfigError, FlaxlmError

FLAGS = flags.FLAGS


def define_distributed_flags():
  flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs outside TPU/SLURM."
  )
  flags.DEFINE_integer("num_processes", None, "number of processes in a multi-process run.")
  flags.DEFINE_integer("process_id", None, "this process's index in a multi-process run.")


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing with one-line errors naming the bad flag or config key and the fix."""
  app.define_help_flags()  # --help / --helpfull (absl.app.run would define them; we call main)
  try:
    return FLAGS(argv)
  except flags.Error as e:  # absl folds the loader's traceback into the message; keep its end
    lines = [
      ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith(" " * 4 + "File")
    ]
    sys.exit(f"{os.path.basename(argv[0])}: {' '.join(lines[-2:])}\nRun with --help for the flags.")
  except (AttributeError, KeyError) as e:  # an unknown --config.x override
    _exit_bad_override(argv, e)
  except (OSError, SyntaxError, ImportError) as e:  # a missing or broken config file
    sys.exit(f"{os.path.basename(argv[0])}: cannot load the config file: {e}")


def define_config_flag(default: str, help_string: str = "run config file."):
  """`--config=<file>` plus `--config.key=value` overrides, with one-line override errors.

  Without --config on the command line, ml_collections loads `default` and resolves the
  overrides while the flag is being defined, before `parse_flags` runs; catch them here too."""
  from ml_collections import config_flags

  try:
    return config_flags.DEFINE_config_file("config", default, help_string)
  except (AttributeError, KeyError) as e:
    _exit_bad_override(sys.argv, e)
  except OSError as e:  # the default file is missing (run from another directory)
    _exit_cannot_load(e)


def _exit_bad_override(argv: list[str], e: Exception):
  text = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
  key = re.findall(r"--config\.([\w.]+)", " ".join(argv))
  sys.exit(
    f"{os.path.basename(argv[0])}: bad config override ({text}). "
    f"Overrides given: {['--config.' + k for k in key]}"
  )


@contextlib.contextmanager
def user_errors(program: str):
  """Exits with `<program>: <message>` (status 1, no traceback) on an error the user can fix:
  every flaxlm error names the culprit and the fix, and a traceback would bury it."""
  try:
    yield
  except FlaxlmError as e:
    sys.exit(f"{program}: {e}")


def start(argv: list[str], workdir_flag, program: str) -> str:
  """Parses the flags, sets up logging and returns --workdir (required)."""
  parse_flags(argv)
  setup_logging()
  if not workdir_flag.value:
    sys.exit(f"{program}: --workdir is required (checkpoints, metrics and reports go there)")
  return workdir_flag.value


def read_config(holder, convert, program: str):
  """(ConfigDict, the typed run config `convert` makes of it); a bad key or value exits with
  one line. Splits a CPU-only host into devices (config.cpu_devices) before JAX starts."""
  config = config_value(holder)
  with user_errors(f"{program}: bad config"):
    run = typed_config(config, convert)
    use_cpu_devices(run.cpu_devices, (run.batch_size // run.step.accum_steps, run.eval_batch_size))
  return config, run


def typed_config(config, convert):
  """The typed run config of a ConfigDict, its step and batch keys checked: what the entry
  points (and the bad-input catalogue, in the same order) do before anything is sized by them."""
  from flaxlm.train import validation

  run = convert(config)
  validation.check_loop_keys(run)
  return run


def setup_logging():
  logging.basicConfig(
    level=logging.INFO,
    format="%(asctime)s %(name)s: %(message)s",
    datefmt="%H:%M:%S",
    force=True,  # an imported library already put a WARNING-level handler on the root logger
  )
  for noisy in ("absl", "jax._src.xla_bridge", "orbax", "tensorflow_datasets"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def init_distributed():
  """Starts jax.distributed: explicit flags, or auto-detected on TPU pods and SLURM."""
  import jax

  if FLAGS.coordinator_address or FLAGS.num_processes:
    if None in (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id):
      sys.exit(
        "multi-process runs need all of --coordinator_address, --num_processes, --process_id"
      )
    # Only the CPU backend reads this; it lets CPU processes all-reduce over TCP.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
    )
  elif (
    int(os.environ.get("SLURM_NTASKS", "1")) > 1
    or "TPU_WORKER_HOSTNAMES" in os.environ
    and "," in os.environ["TPU_WORKER_HOSTNAMES"]
  ):
    jax.distributed.initialize()


def cpu_device_count(requested: int, cores: int, batch_sizes: tuple[int, ...] = ()) -> int:
  """`requested`, or for -1 one per core lowered to the largest count dividing every batch size."""
  if requested == -1:
    return max(n for n in range(1, max(cores, 1) + 1) if all(b % n == 0 for b in batch_sizes))
  if requested < 1:
    raise ConfigError(f"cpu_devices={requested}; use a positive count, or -1 for one per core")
  return requested


def use_cpu_devices(requested: int, batch_sizes: tuple[int, ...] = ()) -> int:
  """Splits this host's CPU into XLA devices (`cpu_device_count`); call it before JAX runs.

  The mesh then spreads batches over them data-parallel, one core each: for small models
  this beats spreading each op over threads, which costs more than such small ops take
  (4 x 128 GPT on 2 cores: ~20% faster per step; a GPT-2 small step is ~20% slower, its
  matmuls already use every core). Only the CPU backend reads it (GPU/TPU runs are
  unaffected), and a device count forced through XLA_FLAGS wins. Returns the count asked
  for (1: JAX's default, nothing changed)."""
  import jax

  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  count = cpu_device_count(requested, cores or 1, batch_sizes)
  if count == 1 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return 1
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # JAX is already running (e.g. train() called from a notebook)
    logging.getLogger("flaxlm").warning(
      "cpu_devices=%d ignored: JAX had already started; set it before any JAX call", count
    )
    return 1
  return count


def config_value(holder):
  """The parsed config; a missing or unloadable config file fails here with one line."""
  try:
    config = holder.value
    config.keys()  # a config that failed to load raises only when first touched
    return config
  except OSError as e:
    _exit_cannot_load(e)


def _exit_cannot_load(e: OSError):
  path = next((ln.strip() for ln in str(e).splitlines() if ln.strip().endswith(".py")), str(e))
  sys.exit(
    f"cannot load config file {path}: no such file, or it failed to import. "
    "Pass --config=configs/<name>.py (see configs/)."
  )
