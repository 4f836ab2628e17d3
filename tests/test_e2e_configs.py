"""Every shipped pretraining config (and BERT's mlm_nsp) trained end to end by train.py on an
emulated data=2 x fsdp=2 x tensor=2 mesh with 2 microbatches per step, then used by
generate.py as a user would.

Each config keeps what decides its code path (family, objective, dtype, scan, remat,
positions, attention, tokenizer kind and reserved tokens, label smoothing, z-loss) and is
shrunk (2 layers, 32 wide, a small vocabulary) onto generated data that stands in for
../shared/data, so the whole sweep runs in CI."""

import json
import math
import pathlib

import jax
import numpy as np
import pytest
from test_configs import CONFIGS, PRETRAINING, load

from flaxlm.decode import seq2seq as seq2seq_decoding
from flaxlm.pretraining.load import load_trained

pytestmark = pytest.mark.slow
RUNS = {p.stem: p for p in PRETRAINING} | {"bert_tiny_nsp": CONFIGS[0].parent / "bert_tiny.py"}

WORDS = "the a dog cat sees runs over under big small red blue house tree river hill".split()


def sentences(n: int, seed: int) -> list[str]:
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, rng.integers(4, 9))).capitalize() + "." for _ in range(n)]


def write_data(tmp: pathlib.Path) -> dict:
  """Text and parallel text (the target is the source reversed) with regular structure."""
  tmp.mkdir(parents=True, exist_ok=True)
  (tmp / "train.txt").write_text("\n".join(sentences(3000, 0)) + "\n")
  (tmp / "valid.txt").write_text("\n".join(sentences(300, 1)) + "\n")
  for split, n, seed in (("train", 3000, 2), ("val", 200, 3)):
    src = sentences(n, seed)
    (tmp / f"{split}.en").write_text("\n".join(src) + "\n")
    (tmp / f"{split}.de").write_text("\n".join(" ".join(s.split()[::-1]) for s in src) + "\n")
  return {
    "text": f"text:{tmp}/train.txt",
    "eval_text": f"text:{tmp}/valid.txt",
    "pairs": f"pairs:{tmp}/train.en,{tmp}/train.de",
    "eval_pairs": f"pairs:{tmp}/val.en,{tmp}/val.de",
  }


def shrunk_args(name: str, data: dict) -> list[str]:
  """Overrides that shrink a config and point it at the generated data."""
  c = load(RUNS[name])
  pairs = c.dataset.startswith("pairs:")
  args = [
    f"--config={RUNS[name].relative_to(RUNS[name].parent.parent)}",
    "--config.model.num_layers=2",
    "--config.model.embed_dim=32",
    "--config.model.mlp_dim=64",
    "--config.model.num_heads=4",
    "--config.model.head_dim=0",
    "--config.model.vocab_size=0",
    f"--config.model.num_kv_heads={2 if c.model.get('num_kv_heads') else 0}",
    f"--config.dataset={data['pairs'] if pairs else data['text']}",
    f"--config.eval_dataset={data['eval_pairs'] if pairs else data['eval_text']}",
    "--config.seq_len=32",
    "--config.batch_size=8",
    "--config.accum_steps=2",
    "--config.eval_batch_size=8",
    "--config.eval_batches=2",
    "--config.num_train_steps=30",
    "--config.learning_rate=3e-3",
    "--config.warmup_steps=5",
    "--config.log_every=5",
    "--config.eval_every=15",
    "--config.checkpoint_every=15",
    "--config.mesh.data=2",
    "--config.mesh.fsdp=2",
    "--config.mesh.tensor=2",
    "--config.cpu_devices=1",
    "--config.sample_tokens=12",
  ]
  if c.model.get("num_decoder_layers"):
    args.append("--config.model.num_decoder_layers=2")
  if "max_len" in c.model:
    args.append("--config.model.max_len=64")
  if pairs:
    args.append("--config.target_len=32")
  if c.tokenizer.kind in ("sentencepiece", "wordpiece"):  # room for T5's 100 sentinels too
    args.append("--config.tokenizer.vocab_size=512")
  if c.get("text_feature", "text") != "text":  # text: files have the one field 'text'
    args.append("--config.text_feature=text")
  if c.tokenizer.kind == "char":  # the config's prompt may use characters the data lacks
    args.append("--config.sample_prompt=The ")
  if name == "bert_tiny_nsp":
    args += ["--config.objective=mlm_nsp", "--config.model.nsp_head=true"]
  return args


EVAL_KEYS = {
  "causal_lm": {"eval_loss", "eval_accuracy", "eval_perplexity"},
  "mlm": {"eval_loss", "eval_accuracy", "eval_accuracy_at_mask"},
  "mlm_nsp": {"eval_loss", "eval_accuracy", "eval_accuracy_at_mask", "eval_nsp_accuracy"},
  "span_corruption": {"eval_loss", "eval_accuracy"},
  "seq2seq": {"eval_loss", "eval_accuracy"},
}


@pytest.fixture(scope="module")
def runs(scripts, tmp_path_factory) -> dict:
  """name -> (workdir, finished process) for every config, two at a time (213 s one after
  another here, 111 s so)."""
  base = tmp_path_factory.mktemp("e2e")
  data = write_data(base / "data")
  jobs = {name: ("train.py", [f"--workdir={base / name}", *shrunk_args(name, data)],
                 {"devices": 8, "tiny": False}) for name in RUNS}  # fmt: skip
  finished = scripts.run_all(jobs, base)
  return {name: (base / name, finished[name]) for name in RUNS}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_config_trains_end_to_end_on_a_full_mesh(runs, name):
  workdir, proc = runs[name]
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in proc.stderr
  assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
  assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
  assert rows[-1]["loss_avg"] < rows[0]["loss_avg"], [r["loss_avg"] for r in rows]
  meta = json.loads(next((workdir / "checkpoints" / "30").rglob("metadata")).read_text())
  objective = meta.get("objective") or load(RUNS[name]).objective
  evals = [r for r in rows if "eval_loss" in r]
  assert [r["step"] for r in evals] == [15, 30]
  assert EVAL_KEYS[objective] <= set(evals[-1]), set(evals[-1])
  assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] + 0.5
  report = "--- sample ---" if objective == "causal_lm" else "--- held-out example ---"
  assert report in proc.stdout, proc.stdout
  trainable, params, tokenizer = load_trained(workdir)  # the checkpoint restores on 1 device
  assert tokenizer.to_json() == meta["tokenizer"]
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


# --- generate.py on those workdirs ----------------------------------------------------------


def generate(scripts, workdir, *args):
  return scripts.run("generate.py", f"--workdir={workdir}", *args, tiny=False, timeout=300)


def test_generate_samples_repeat_by_seed_and_greedy_matches_the_library(runs, scripts):
  from flaxlm.decode.sampling import SamplingConfig, sample_text

  workdir, proc = runs["gpt_tiny"]
  assert proc.returncode == 0
  args = ["--prompt=The dog", "--max_new_tokens=8", "--top_k=5", "--top_p=0.9", "--num_samples=2"]
  first, again = (
    generate(scripts, workdir, *args, "--seed=1"),
    generate(scripts, workdir, *args, "--seed=1"),
  )
  other = generate(scripts, workdir, *args, "--seed=2")
  assert first.returncode == 0, first.stderr[-2000:]
  assert first.stdout == again.stdout and first.stdout.count("--- sample") == 2
  assert other.stdout != first.stdout
  greedy = generate(scripts, workdir, "--prompt=The dog", "--max_new_tokens=8", "--greedy")
  trainable, params, tokenizer = load_trained(workdir)
  want = sample_text(trainable, params, tokenizer, "The dog", SamplingConfig(8, temperature=0.0))
  assert (
    greedy.stdout.strip().endswith("The dog" + want.rstrip()) or ("The dog" + want) in greedy.stdout
  )


def test_generate_decoder_beams_match_greedy_and_the_library(runs, scripts):
  """A decoder workdir decodes with --beam_size: one beam without length penalty is greedy
  decoding, three beams print what flaxlm.decode.sampling.beam_texts returns, and beams with
  several samples are refused in one line."""
  from flaxlm.decode.sampling import beam_texts

  workdir, proc = runs["gpt_tiny"]
  assert proc.returncode == 0
  args = ["--prompt=The dog", "--prompt=A", "--max_new_tokens=8"]
  greedy = generate(scripts, workdir, *args, "--greedy")
  one_beam = generate(scripts, workdir, *args, "--beam_size=1", "--alpha=0")
  assert greedy.returncode == 0 and one_beam.returncode == 0, one_beam.stderr[-2000:]
  texts = lambda out: [line for line in out.stdout.splitlines() if not line.startswith("---")]  # noqa: E731
  assert texts(one_beam) == texts(greedy) and one_beam.stdout.count("best beam ---") == 2
  three = generate(scripts, workdir, *args, "--beam_size=3")
  trainable, params, tokenizer = load_trained(workdir)
  want = beam_texts(trainable, params, tokenizer, ["The dog", "A"], 8, beam_size=3)
  assert "\n".join(texts(three)) == f"The dog{want[0]}\nA{want[1]}", (three.stdout, want)
  refused = generate(scripts, workdir, *args, "--beam_size=2", "--num_samples=2")
  assert refused.returncode != 0 and "Traceback" not in refused.stderr
  assert "--beam_size decodes one float32 output a prompt" in refused.stderr.splitlines()[-1]


def test_generate_translates_files_with_beams_and_checks_references(runs, scripts, tmp_path):
  workdir, proc = runs["transformer_multi30k"]
  assert proc.returncode == 0
  src = tmp_path / "src.en"
  src.write_text("\n".join(sentences(5, 9)) + "\n")
  refs = tmp_path / "ref.de"
  refs.write_text("\n".join(" ".join(s.split()[::-1]) for s in sentences(5, 9)) + "\n")
  out = tmp_path / "hyp.de"
  ok = generate(scripts, workdir, f"--input_file={src}", f"--reference_file={refs}",
                "--beam_size=3", f"--output_file={out}", "--max_new_tokens=16")  # fmt: skip
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert len(out.read_text().splitlines()) == 5
  assert "BLEU" in ok.stdout and "(sacreBLEU, detokenized, 5 sentences)" in ok.stdout
  short = tmp_path / "short.de"
  short.write_text("one line\n")
  bad = generate(scripts, workdir, f"--input_file={src}", f"--reference_file={short}")
  assert bad.returncode != 0 and "Traceback" not in bad.stderr
  assert "has 1 lines, the input 5; they must align" in bad.stderr.strip().splitlines()[-1]
  lines = refs.read_text().splitlines()
  assert seq2seq_decoding.corpus_bleu(lines, lines) == pytest.approx(100.0)


def test_generate_refuses_an_encoder_only_workdir(runs, scripts):
  workdir, proc = runs["bert_tiny"]
  assert proc.returncode == 0
  refused = generate(scripts, workdir, "--prompt=hello")
  assert refused.returncode != 0 and "Traceback" not in refused.stderr
  assert "holds an encoder (masked LM), which does not generate text" in refused.stderr
