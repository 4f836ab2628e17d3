"""Data at corpus scale (flaxlm/data/shards.py, corpus.py, prepare.py, pipeline.py): a training
process's peak memory does not grow with the corpus, a run on the larger corpus resumes exactly
after SIGKILL, each process of a multi-process run makes only its own rows of every global
batch, Grain worker processes train and resume like the main process, token shards hold what
the tokenizer encodes, a prepared corpus is shared without re-tokenizing, and a TFDS catalog
split is read one record at a time.

The train.py runs tokenize two generated corpora of ~1 MB and ~20 MB (byte tokenizer: 1.1M and
22M tokens) and train the 1-layer model of conftest.Scripts.TINY for 100 steps."""

import json
import os
import pickle
import re
import signal
import time

import numpy as np
import pytest
from samples import (
  RESUME,
  by_step,
  free_port,
  max_difference,
  resumed_from,
  rows,
  sentencepiece,
  training_docs,
)

from flaxlm.data import corpus, shards, sources, spec, tokenizers
from flaxlm.data.tokenizers import TokenizerConfig
from flaxlm.errors import DataError

# train.py in this process, printing its peak resident memory at exit, and saving its rows of
# the first {steps} global batches (what the loop hands sharding.local_to_global) with their
# row numbers to {dump}/p<process>_step<s>.npz.
TRAIN_AND_REPORT = """
import atexit, os, resource, runpy, sys
import numpy as np
from flaxlm.nn import sharding
local_to_global, dumped = sharding.local_to_global, []

def dump_rows(batch, batch_sharding, global_batch):
  if len(dumped) < {steps}:
    import jax
    dumped.append(None)
    rows = sharding.process_rows(batch_sharding, (global_batch,))
    name = f"p{{jax.process_index()}}_step{{len(dumped)}}.npz"
    np.savez(os.path.join({dump!r}, name), rows=rows, **batch)
  return local_to_global(batch, batch_sharding, global_batch)

sharding.local_to_global = dump_rows
atexit.register(lambda: print("max_rss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""
DUMPED_STEPS = 3
MB = 1 << 20


def write_corpus(folder, megabytes: int, seed: int) -> str:
  """~`megabytes` of random lines of 12 words from a 2,000-word vocabulary, as 100 kB files."""
  folder.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  words = np.array(["".join(rng.choice(letters, n)) for n in rng.integers(2, 9, 2000)])
  for i in range(megabytes * 10):
    lines = words[rng.integers(0, len(words), (1500, 12))]
    (folder / f"doc{i:04d}.txt").write_text("\n".join(map(" ".join, lines)) + "\n")
  return f"text:{folder}/*.txt"


def train(scripts, logs, name: str, *args, devices: int = 4, processes: int = 1) -> list:
  """Runs TRAIN_AND_REPORT (as `processes` processes of one run); returns their outputs."""
  dump = logs / f"{name}_rows"
  dump.mkdir()
  code = TRAIN_AND_REPORT.format(steps=DUMPED_STEPS, dump=str(dump))
  extra = [()]
  if processes > 1:
    common = (f"--coordinator_address=127.0.0.1:{free_port()}", f"--num_processes={processes}")
    extra = [(*common, f"--process_id={i}") for i in range(processes)]
  procs = []
  for i, more in enumerate(extra):
    with open(logs / f"{name}_{i}.out", "w") as out, open(logs / f"{name}_{i}.err", "w") as err:
      procs.append(
        scripts.start(("-c", code), *args, *more, devices=devices, stdout=out, stderr=err)
      )
  outputs = []
  for i, proc in enumerate(procs):
    proc.wait(timeout=600)
    out, err = ((logs / f"{name}_{i}.{x}").read_text() for x in ("out", "err"))
    assert proc.returncode == 0, err[-3000:]
    outputs.append({"stdout": out, "stderr": err, "rows": dump})
  return outputs


def peak_rss(run: dict) -> int:
  return int(re.search(r"max_rss_kb (\d+)", run["stdout"]).group(1)) * 1024


def snapshot(folder) -> dict:
  """Every file of a folder with its size and modification time."""
  return {
    str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
    for p in sorted(folder.rglob("*"))
    if p.is_file()
  }


@pytest.fixture(scope="module")
def corpora(scripts, tmp_path_factory):
  """The two corpora as dataset strings, their TFDS datasets built beforehand: TFDS's writer
  holds a split in memory while it builds it (up to 1 GB), once per data_dir; what is
  measured here is tokenizing and training."""
  base = tmp_path_factory.mktemp("corpora")
  out = {"small": write_corpus(base / "small", 1, 0), "large": write_corpus(base / "large", 20, 1)}
  for dataset in out.values():
    sources.open_source(dataset, scripts.data_dir)
  return out


@pytest.fixture(scope="module")
def runs(scripts, corpora, tmp_path_factory):
  """A RESUME run (4 devices) on the small corpus, one on the large, and the small one again.
  Peaks are compared between the last two: both load every program from the persistent
  compilation cache, which the first filled (a compilation costs ~170 MB of peak here, give or
  take 15 MB from run to run)."""
  logs = tmp_path_factory.mktemp("runs")
  out = {}
  for name, size in (("small", "small"), ("large", "large"), ("small_again", "small")):
    args = (f"--workdir={logs / name}", f"--config.dataset={corpora[size]}", *RESUME)
    (out[name],) = train(scripts, logs, name, *args)
    out[name]["workdir"] = logs / name
  return out


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_corpus(runs, record_property):
  """Tokenizing 20x more text (two shards instead of one) and training on it leaves the
  training process's peak resident memory where it was: the text is read a document at a
  time, tokenized by worker processes and written as it comes, and training reads windows
  from the files."""
  small, large = runs["small_again"], runs["large"]
  index = {
    k: json.loads((r["workdir"] / "data/train/index.json").read_text()) for k, r in runs.items()
  }
  tokens = {k: sum(n for _, n in i["shards"]) for k, i in index.items()}
  assert tokens["large"] > 19 * tokens["small"] and len(index["large"]["shards"]) == 2
  growth = peak_rss(large) - peak_rss(small)
  record_property("peak_rss_small_mb", peak_rss(small) / MB)
  record_property("peak_rss_large_mb", peak_rss(large) / MB)
  print(f"peak RSS {peak_rss(small) / MB:.1f} MB ({tokens['small']:,} tokens) -> "
        f"{peak_rss(large) / MB:.1f} MB ({tokens['large']:,} tokens)")  # fmt: skip
  # A peak varies by up to ~17 MB from run to run here (three pairs of runs: +13.6, -11.6 and
  # +16.9 MB, large minus small); holding the extra 20.7M tokens as int32 would add 79 MB.
  held = 4 * (tokens["large"] - tokens["small"])
  assert abs(growth) <= 32 * MB and held > 2 * 32 * MB


def kill_after_checkpoint(scripts, workdir, *args) -> list[int]:
  """Starts train.py and SIGKILLs it once its step-10 checkpoint exists; returns the pids of
  its child processes at that moment."""
  with open(workdir / "killed.out", "w") as out, open(workdir / "killed.err", "w") as err:
    proc = scripts.start(
      "train.py", f"--workdir={workdir}", *args, devices=4, stdout=out, stderr=err
    )
  checkpoints, deadline = workdir / "checkpoints", time.monotonic() + 300
  children = []
  while proc.poll() is None and time.monotonic() < deadline:
    done = [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()]
    if done and max(done) >= 10:
      children = [int(c) for c in _children(proc.pid)]
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.01)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, (workdir / "killed.err").read_text()[-2000:]
  return children


def _children(pid: int) -> list[str]:
  found = []
  for task in os.listdir(f"/proc/{pid}/task"):
    try:
      with open(f"/proc/{pid}/task/{task}/children") as f:
        found += f.read().split()
    except FileNotFoundError:  # the thread exited between listdir and open
      continue
  return found


def alive(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/status") as f:
      return "\nState:\tZ" not in f.read()  # a zombie has exited
  except FileNotFoundError:
    return False


def resume(scripts, workdir, *args) -> str:
  """Reruns the killed command to the end; returns its log."""
  again = scripts.run("train.py", f"--workdir={workdir}", *args, devices=4)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "final step 100" in again.stdout and resumed_from(again.stderr) >= 10
  assert sorted(by_step(workdir)) == list(range(1, 101))
  return again.stderr


@pytest.mark.slow
def test_large_corpus_resumes_exactly_after_sigkill(scripts, runs, corpora, tmp_path):
  """Killed after its step-10 checkpoint, a run over the two-shard corpus resumes from its
  newest checkpoint and logs what the uninterrupted run logged, step for step."""
  large = runs["large"]
  args = (f"--config.dataset={corpora['large']}",
          f"--config.corpus_cache={large['workdir'] / 'data'}", *RESUME)  # fmt: skip
  kill_after_checkpoint(scripts, tmp_path, *args)
  resume(scripts, tmp_path, *args)
  diff = max_difference(rows(tmp_path), by_step(large["workdir"]))
  print(f"SIGKILL on the 20 MB corpus: max metric difference {diff}")
  assert diff <= 1e-6


@pytest.fixture(scope="module")
def prepared(scripts, corpora, tmp_path_factory):
  """The small corpus prepared by `python -m flaxlm.data.prepare` for the runs' config."""
  out = tmp_path_factory.mktemp("prepared") / "corpus"
  proc = scripts.run(("-m", "flaxlm.data.prepare"), f"--config.dataset={corpora['small']}",
                     f"--out={out}")  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  return {"folder": out, "stdout": proc.stdout, "stderr": proc.stderr, "files": snapshot(out)}


@pytest.fixture(scope="module")
def two_processes(scripts, corpora, prepared, tmp_path_factory):
  """The first steps of the small run as 2 processes x 2 devices, on the prepared corpus."""
  logs = tmp_path_factory.mktemp("two_processes")
  args = (f"--workdir={logs / 'workdir'}", f"--config.dataset={corpora['small']}",
          f"--config.corpus_cache={prepared['folder']}", f"--config.num_train_steps={DUMPED_STEPS}")  # fmt: skip
  return train(scripts, logs, "two", *args, devices=2, processes=2)


@pytest.mark.slow
def test_prepare_builds_what_train_py_builds_and_runs_share_it(runs, prepared, two_processes):
  """`python -m flaxlm.data.prepare` writes the tokenizer and shards a train.py run writes in
  its workdir; runs pointed at it (--config.corpus_cache) read it without tokenizing again and
  leave it as it was."""
  assert "tokenizing" in prepared["stderr"]
  assert re.search(r"prepared .*: [\d,]+ training and [\d,]+ validation tokens", prepared["stdout"])
  own = runs["small"]["workdir"] / "data"
  folder = prepared["folder"]
  for name in ("tokenizer.json", "corpus.json"):
    assert json.loads((folder / name).read_text()) == json.loads((own / name).read_text())
  np.testing.assert_array_equal(
    shards.TokenShards.open(folder / "train"), shards.TokenShards.open(own / "train")
  )
  for process in two_processes:
    assert "tokenizing" not in process["stderr"]
  assert snapshot(folder) == prepared["files"]


@pytest.mark.slow
def test_a_prepared_corpus_is_not_replaced(corpora, prepared, scripts):
  """A run whose tokenizer differs from the prepared corpus's is refused, naming the keys,
  and the folder (maybe read by other jobs) is left alone."""
  config = spec.DataConfig(dataset=corpora["small"], data_dir=scripts.data_dir)
  with pytest.raises(
    DataError, match=r"corpus_cache=.* other tokenizer\.kind, tokenizer\.vocab_size"
  ):
    corpus.load_corpus(
      config, TokenizerConfig(kind="char", vocab_size=99), prepared["folder"], shared=True
    )
  assert snapshot(prepared["folder"]) == prepared["files"]


@pytest.mark.slow
def test_each_process_makes_only_its_rows(runs, two_processes):
  """Each of 2 processes builds half the rows of every global batch: disjoint row sets whose
  union is the batch, and the rows are exactly those the 1-process run fed."""
  single = runs["small"]["rows"]
  dumps = two_processes[0]["rows"]
  for step in range(1, DUMPED_STEPS + 1):
    want = dict(np.load(single / f"p0_step{step}.npz"))
    np.testing.assert_array_equal(want["rows"], np.arange(8))
    held = []
    for process in (0, 1):
      got = dict(np.load(dumps / f"p{process}_step{step}.npz"))
      assert len(got["rows"]) == 4 and got["inputs"].shape == (4, 32)
      for key in ("inputs", "targets", "weights"):
        np.testing.assert_array_equal(got[key], want[key][got["rows"]])
      held.append(set(got["rows"].tolist()))
    assert not held[0] & held[1] and held[0] | held[1] == set(range(8))


@pytest.mark.slow
def test_data_workers_train_and_resume_like_the_main_process(
  scripts, runs, corpora, prepared, tmp_path
):
  """With data_workers=2 (Grain worker processes make the examples), a run logs the losses of
  the data_workers=0 run; killed after its step-10 checkpoint, its worker processes exit with
  it, and the rerun resumes exactly."""
  args = (f"--config.dataset={corpora['small']}", f"--config.corpus_cache={prepared['folder']}",
          "--config.data_workers=2", *RESUME)  # fmt: skip
  workers = kill_after_checkpoint(scripts, tmp_path, *args)
  assert len(workers) >= 2
  deadline = time.monotonic() + 30
  while any(map(alive, workers)) and time.monotonic() < deadline:
    time.sleep(0.2)
  left = [pid for pid in workers if alive(pid)]
  for pid in left:  # do not leave them running when the check fails
    os.kill(pid, signal.SIGKILL)
  assert not left, "worker processes outlived the killed training process"
  stderr = resume(scripts, tmp_path, *args)
  assert "tokenizing" not in stderr + (tmp_path / "killed.err").read_text()
  assert max_difference(rows(tmp_path), by_step(runs["small"]["workdir"])) <= 1e-6


# --- token shards ------------------------------------------------------------------------------


def test_token_shards_read_across_shard_boundaries(tmp_path, monkeypatch):
  """With 7-token shards, every slice of the stream (and of a view) equals the concatenated
  tokens, and a pickled stream (what Grain sends its workers) carries file names, not tokens."""
  monkeypatch.setattr(shards, "SHARD_TOKENS", 7)
  docs = ["hello world", "", "abc\ndef", "x" * 30, "ünï\n"]
  byte = tokenizers.ByteTokenizer()
  stream = shards.write(docs, byte, tmp_path / "s", workers=1)
  want = np.concatenate([np.r_[byte.encode(d), byte.eos_id] for d in docs]).astype(np.int32)
  assert len(stream.files) > 3 and len(stream) == len(want)
  for a in range(len(want) + 1):
    for b in range(a, len(want) + 2):
      np.testing.assert_array_equal(stream[a:b], want[a:b])
  assert [stream[i] for i in (0, 11, 12, -1)] == [want[i] for i in (0, 11, 12, -1)]
  view = stream.view(5, 40)
  np.testing.assert_array_equal(view[3:30], want[8:35])
  np.testing.assert_array_equal(np.asarray(view), want[5:40])
  again = pickle.loads(pickle.dumps(view))
  np.testing.assert_array_equal(np.asarray(again), want[5:40])
  large = shards.write(["y" * 5000], byte, tmp_path / "large", workers=1)
  assert len(pickle.dumps(large)) < 2000 < 4 * len(large)


def kind_tokenizer(kind: str, docs: list[str]):
  if kind == "sentencepiece":
    return sentencepiece()  # exact mode: newlines and runs of spaces are pieces
  config = TokenizerConfig(kind=kind, vocab_size=300)
  return tokenizers.train_tokenizer(config, docs)


@pytest.mark.parametrize("kind", tokenizers.KINDS)
def test_write_with_workers_equals_encode(kind, tmp_path, monkeypatch):
  """Documents cut into pieces at newlines (60 characters here) and tokenized by 2 worker
  processes give each document's own encoding followed by EOS, as 1 process does."""
  monkeypatch.setattr(shards, "PIECE_CHARS", 60)
  docs = [*training_docs()[:4], "", "one line longer than a piece, " * 4, "a\n\n\n  b  \n"]
  tok = kind_tokenizer(kind, docs)
  eos = [] if tok.eos_id is None else [tok.eos_id]
  want = np.concatenate([np.r_[tok.encode(d), eos] for d in docs]).astype(np.int32)
  assert sum(1 for _ in shards.pieces(docs, 60)) > 10 * len(docs)  # most are cut
  one = shards.write(docs, tok, tmp_path / "one", workers=1)
  np.testing.assert_array_equal(np.asarray(one), want)
  two = shards.write(docs, tok, tmp_path / "two", workers=2)
  np.testing.assert_array_equal(np.asarray(two), want)


# --- TFDS catalog datasets ----------------------------------------------------------------------


class CountingSource:
  """A TFDS data source that counts the records read (and has no other way to read them)."""

  def __init__(self, source):
    self.source, self.reads = source, 0

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    assert isinstance(i, int)
    self.reads += 1
    return self.source[i]


def test_tfds_catalog_split_is_read_one_record_at_a_time(tmp_path):
  """A TFDS dataset prepared in a data_dir (a registered builder, read through `tfds:` as a
  catalog dataset is) streams: its documents are read by index one at a time, in the
  split's order, and its validation split is tokenized on its own."""
  import tensorflow_datasets as tfds

  texts = {
    "train": [f"record {i}\n" + "words " * i for i in range(40)],
    "validation": ["held out\n"] * 3,
  }

  class CorpusScaleCatalog(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      features = {"text": tfds.features.Text(), "title": tfds.features.Text()}
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(split) for split in texts}

    def _generate_examples(self, split):
      for i, text in enumerate(texts[split]):
        yield i, {"text": text, "title": f"{split} {i}"}

  data_dir = str(tmp_path / "tfds")
  source = sources.open_source("tfds:corpus_scale_catalog", data_dir)
  counting = source.splits["train"] = CountingSource(source.splits["train"])
  documents = source.iter_documents("train")
  read = [next(documents)]
  assert counting.reads <= 2  # the record, and a look at its fields
  read += [next(documents) for _ in range(9)]
  assert counting.reads <= 11
  read += list(documents)
  stored = [counting.source[i]["text"].decode() for i in range(40)]  # the split's own order
  assert read == stored and sorted(stored) == sorted(texts["train"])

  config = spec.DataConfig(dataset="tfds:corpus_scale_catalog", data_dir=data_dir)
  data = corpus.load_corpus(config, TokenizerConfig(kind="byte"), tmp_path / "cache")
  byte = tokenizers.ByteTokenizer()
  encode = lambda docs: np.concatenate([np.r_[byte.encode(d), byte.eos_id] for d in docs])
  np.testing.assert_array_equal(data.train, encode(stored))
  np.testing.assert_array_equal(data.validation, encode(texts["validation"]))
