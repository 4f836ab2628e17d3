"""Every test runs on CPU with 8 emulated devices, so sharded code paths are exercised."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

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


@pytest.fixture
def tfds_dir(tmp_path_factory):
  """A TFDS cache shared by the tests of one session (building python-docs takes ~1 s)."""
  return str(tmp_path_factory.getbasetemp() / "tfds")
