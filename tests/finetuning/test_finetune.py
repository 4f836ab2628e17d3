"""Fine-tuning (flaxlm/finetuning/run.py, flaxlm/tasks/): examples and heads per task, sub-word
alignment, metrics against the libraries that define them, a pretrained backbone restored
bit for bit, frozen backbones, sharded == single device, resume, and evaluate / predict
agreeing with the end of training."""

import json

import jax
import numpy as np
import pytest
from samples import WORDS, Tok, files, lstm_config, sentiment_rows

from flaxlm.config import default_config, from_config_dict
from flaxlm.config import finetuning as config_finetune
from flaxlm.data import tokenizers
from flaxlm.finetuning import load as finetuned
from flaxlm.finetuning import run as finetuning
from flaxlm.models import registry
from flaxlm.nn import sharding
from flaxlm.pretraining import run as pretraining
from flaxlm.pretraining.load import load_trained
from flaxlm.tasks import Columns, metrics, task_class
from flaxlm.tasks.base import encode_inputs

# --- examples ---------------------------------------------------------------------------------


def test_pair_encoding_truncates_longest_first():
  out = encode_inputs(Tok(), "abcdef", "xy", max_len=8)
  # [CLS] a b c [SEP] x y [SEP]: 'abcdef' lost three, 'xy' kept whole
  assert out["inputs"].tolist() == [2, 10, 11, 12, 3, 33, 34, 3]
  assert out["type_ids"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
  single = encode_inputs(Tok(), "ab", None, max_len=8)
  assert single["inputs"].tolist() == [2, 10, 11, 3]


def ner_task(tokenizer, labels=("B-PER", "I-PER", "O"), family="bert", max_len=16):
  cls = task_class("token_classification")
  config = cls.Config(max_len=max_len)
  fam = registry.family_of(family)
  return cls(config, Columns(), fam, fam.config_cls(), tokenizer, list(labels))


def test_first_subword_alignment_and_mapping_back():
  """Each word's tag sits on its first sub-word; the rest are ignored (-1); predictions at
  first sub-words map back to words, and words cut off by max_len are predicted 'O'."""
  task = ner_task(Tok(), max_len=8)
  record = {
    "words": ["ab", "c", "def", "gh"],
    "tags": ["B-PER", "I-PER", "O", "O"],
    "_where": "x:1",
  }
  ex = task.example(record)
  assert ex["inputs"].tolist() == [2, 10, 11, 12, 13, 14, 15, 3]  # 'gh' does not fit
  assert ex["labels"].tolist() == [-1, 0, -1, 1, 2, -1, -1, -1]
  assert ex["word_index"].tolist() == [-1, 0, -1, 1, 2, -1, -1, -1]
  predictions = {"tags": [np.array([2, 1, 0, 0, 0, 2, 2, 2])], "word_index": [ex["word_index"]]}
  assert task.word_tags(predictions, 0, 4) == ["I-PER", "B-PER", "B-PER", "O"]


# --- metrics are the libraries' ---------------------------------------------------------------


def test_classification_metrics_equal_scikit_learn():
  from sklearn import metrics as sk

  y = np.array([0, 1, 1, 0, 1, 2, 2, 0])
  probs = np.eye(3)[[0, 1, 0, 0, 2, 2, 1, 1]] * 0.8 + 0.2 / 3
  out = metrics.single_label(y, probs, ["neg", "pos", "mixed"])
  pred = probs.argmax(-1)
  assert out["accuracy"] == pytest.approx(sk.accuracy_score(y, pred)) == pytest.approx(4 / 8)
  assert out["f1_macro"] == pytest.approx(sk.f1_score(y, pred, average="macro"))
  assert out["mcc"] == pytest.approx(sk.matthews_corrcoef(y, pred))
  assert out["confusion_matrix"] == [[2, 1, 0], [1, 1, 1], [0, 1, 1]]
  assert out["per_class"]["pos"]["recall"] == pytest.approx(1 / 3)
  binary = metrics.single_label(
    np.array([0, 0, 1, 1]), np.array([[0.9, 0.1], [0.3, 0.7], [0.35, 0.65], [0.2, 0.8]]), ["0", "1"]
  )
  assert binary["roc_auc"] == pytest.approx(0.75)  # 3 of 4 (neg, pos) pairs ordered right
  assert binary["pr_auc"] == pytest.approx(
    sk.average_precision_score([0, 0, 1, 1], [0.1, 0.7, 0.65, 0.8])
  )
  reg = metrics.regression(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 1.9, 3.2, 4.5]))
  assert reg["spearman"] == pytest.approx(1.0) and 0.95 < reg["pearson"] < 1.0


def test_entity_metrics_have_conll_semantics():
  """seqeval's default mode, as conlleval: an I- after O starts an entity (IOB1), boundaries
  and type must match."""
  gold = [["B-PER", "I-PER", "O", "B-LOC"], ["I-ORG", "I-ORG", "O"]]  # second sentence IOB1
  pred = [["B-PER", "O", "O", "B-LOC"], ["I-ORG", "I-ORG", "O"]]
  out = metrics.entities(gold, pred)
  # entities: PER(0-1), LOC(3), ORG(0-1); predicted PER(0) is wrong -> 2 of 3 right each way
  assert out["entity_precision"] == pytest.approx(2 / 3)
  assert out["entity_recall"] == pytest.approx(2 / 3)
  assert out["entity_f1"] == pytest.approx(2 / 3)


# --- training ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("lstm")
  c = lstm_config(tmp)
  result = finetuning.train(config_finetune.from_config_dict(c), tmp / "workdir")
  return tmp, c, result


def test_lstm_learns_the_cue_and_reports(lstm_run):
  tmp, _, result = lstm_run
  assert result["eval_accuracy"] >= 0.9, result
  rows = [json.loads(x) for x in (tmp / "workdir" / "metrics.jsonl").read_text().splitlines()]
  assert all("examples_per_sec" in r for r in rows[1:])
  assert {"eval_accuracy", "eval_f1_macro", "eval_mcc", "eval_roc_auc"} <= set(rows[-1])
  written = json.loads((tmp / "workdir" / "eval_dev.json").read_text())
  assert written["eval_confusion_matrix"] == result["eval_confusion_matrix"]
  for png in ("learning_curve.png", "confusion_dev.png"):
    assert (tmp / "workdir" / png).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_and_predict_agree_with_the_end_of_training(lstm_run, tmp_path):
  tmp, c, result = lstm_run
  again = finetuned.evaluate(tmp / "workdir", c.eval_data)
  for key in ("eval_accuracy", "eval_loss", "eval_f1_macro"):
    assert again[key] == pytest.approx(result[key]), key
  assert again["eval_confusion_matrix"] == result["eval_confusion_matrix"]
  out = tmp_path / "pred.jsonl"
  assert finetuned.predict(tmp / "workdir", c.eval_data, str(out)) == 64
  rows = [json.loads(x) for x in out.read_text().splitlines()]
  truth = [label for label, _ in sentiment_rows(64, 1)]
  accuracy = np.mean([int(r["prediction"]) == t for r, t in zip(rows, truth, strict=True)])
  assert accuracy == pytest.approx(result["eval_accuracy"])
  assert set(rows[0]["probabilities"]) == {"0", "1"} and rows[0]["source"].endswith("dev.tsv:2")


def test_early_stopping_keeps_the_best_checkpoint(tmp_path):
  """With patience 1 the run stops once the dev metric stops improving; best/ holds the step
  of the best value and the final evaluation is that checkpoint's."""
  c = lstm_config(tmp_path, num_train_steps=200, eval_every=10, learning_rate=3e-2)
  c.early_stopping.patience = 1
  result = finetuning.train(config_finetune.from_config_dict(c), tmp_path / "workdir")
  best = result["best"]
  assert result["step"] < 200 and best["evals_since"] == 1
  assert result["eval_accuracy"] == pytest.approx(best["value"])
  assert [p.name for p in (tmp_path / "workdir" / "best").iterdir() if p.name.isdigit()] == [
    str(best["step"])
  ]


@pytest.mark.parametrize(
  "task_name", [pytest.param("classification", marks=pytest.mark.slow), "token_classification"]
)
def test_sharded_finetuning_equals_one_device(task_name, sharded_equals_single_device):
  """A task model's steps on a 2 x 2 x 2 mesh give the losses and parameters of one device:
  a small BERT backbone with a sequence head, and with a token head."""
  from flaxlm.data import pipeline
  from flaxlm.models import heads

  cls = task_class(task_name)
  family = registry.family_of("bert")
  model_config = family.config_cls(vocab_size=64, num_layers=1, num_heads=2, embed_dim=16,
                                   mlp_dim=32, max_len=32, dropout_rate=0.0)  # fmt: skip
  rng = np.random.default_rng(0)
  if task_name == "classification":
    task = cls(
      cls.Config(max_len=16, dropout_rate=0.0), Columns(), family, model_config, Tok(), ["0", "1"]
    )
    records = [
      {
        "text": "".join(rng.choice(list("abcdef"), rng.integers(2, 9))),
        "label": str(i % 2),
        "_where": "x",
      }
      for i in range(8)
    ]
  else:
    task = ner_task(Tok(), max_len=16)
    task = cls(
      cls.Config(max_len=16, dropout_rate=0.0), Columns(), family, model_config, Tok(), task.labels
    )
    records = [
      {
        "words": ["ab", "cd", "e"][: 1 + i % 3],
        "tags": ["B-PER", "I-PER", "O"][: 1 + i % 3],
        "_where": "x",
      }
      for i in range(8)
    ]
  batch = pipeline.pad_collate(task.pad_values)([task.example(r) for r in records])
  model = task.model(registry.build_model("bert", model_config))
  sharded_equals_single_device(model, task.loss, batch, (2, 2, 2), init_batch=heads.dummy_batch(1))


# --- a pretrained backbone --------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_workdir(tmp_path_factory, tfds_dir_module):
  """A flaxlm-pretrained BERT (10 steps of MLM on the embedded docs)."""
  workdir = tmp_path_factory.mktemp("bert_pretrained")
  c = default_config()
  c.model_family = "bert"
  c.model = pretraining_model()
  c.tokenizer.update(kind="wordpiece", vocab_size=300, special_tokens="bert", lowercase=True)
  c.update(seq_len=32, batch_size=8, eval_batch_size=8, eval_batches=1, num_train_steps=10,
           log_every=5, eval_every=0, checkpoint_every=0, data_dir=tfds_dir_module)  # fmt: skip
  pretraining.train(from_config_dict(c), workdir)
  return workdir


def pretraining_model():
  from flaxlm.config import model_preset

  m = model_preset("bert", "bert_tiny")
  m.update(num_layers=2, embed_dim=32, num_heads=2, mlp_dim=64, max_len=64, nsp_head=False)
  return m


@pytest.fixture(scope="module")
def tfds_dir_module(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def bert_finetune(tmp, workdir, **overrides):
  c = lstm_config(tmp, **overrides)
  c.init_from = str(workdir)
  c.model = config_finetune.runtime_model_block()
  c.task.max_len = 32
  return c


def test_pretrained_backbone_is_restored_bit_for_bit(bert_workdir, tmp_path):
  """init_from puts the pretraining checkpoint's parameters under 'backbone' unchanged (its MLM
  head is left out); the task head is new; the tokenizer is the checkpoint's."""
  _, pretrained, tokenizer = load_trained(bert_workdir)
  c = bert_finetune(tmp_path, bert_workdir, num_train_steps=0)
  ft = config_finetune.from_config_dict(c)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  from flaxlm.pretraining import transfer

  source = transfer.load(ft.init_from, mesh)
  cls = task_class("classification")
  task = cls(
    ft.task,
    ft.columns,
    registry.family_of("bert"),
    source.model_config,
    source.tokenizer,
    ["0", "1"],
  )
  trainable = finetuning.build(task, "bert", source.model_config, ft, mesh)
  overrides = transfer.backbone_overrides(trainable.abstract_state.params, source, task.layout)
  params = jax.device_get(trainable.init_state(0, overrides).params)
  want = jax.device_get(pretrained)
  for key in ("embed", "layers_0", "layers_1", "pooler", "pos_embed", "type_embed"):
    jax.tree.map(np.testing.assert_array_equal, params["backbone"][key], want[key])
  assert "mlm_dense" not in params["backbone"] and "classifier" in params
  assert source.tokenizer.to_json() == tokenizer.to_json()


def test_frozen_backbone_gets_no_gradient_or_optimizer_state(bert_workdir, tmp_path):
  c = bert_finetune(tmp_path, bert_workdir, num_train_steps=6, eval_every=0, freeze_backbone=True)
  result = finetuning.train(config_finetune.from_config_dict(c), tmp_path / "workdir")
  model = result["model"]
  _, pretrained, _ = load_trained(bert_workdir)
  trained = jax.device_get(model.params)
  jax.tree.map(
    np.testing.assert_array_equal,
    trained["backbone"]["layers_0"],
    jax.device_get(pretrained)["layers_0"],
  )
  opt_leaves = sum(x.size for x in jax.tree.leaves(model.trainable.abstract_state.opt_state))
  head = sum(x.size for x in jax.tree.leaves(trained["classifier"]))
  assert model.trainable.num_trainable == head
  assert opt_leaves <= 2 * head + 8  # Adam's two moments of the head, a few counters


def test_layer_decay_scales_updates_by_depth():
  from flaxlm.train import optim

  params = {"backbone": {"embed": {"embedding": np.ones((4, 2))}, "layers_0": {"k": np.ones(2)},
                         "layers_1": {"k": np.ones(2)}}, "classifier": {"kernel": np.ones(2)}}  # fmt: skip
  depths, num_layers = optim.layer_depths(params)
  assert num_layers == 2
  tx = optim.scale_by_layer(params, 0.5)
  updates, _ = tx.update(jax.tree.map(np.ones_like, params), tx.init(params))
  assert float(updates["classifier"]["kernel"][0]) == 1.0
  assert float(updates["backbone"]["layers_1"]["k"][0]) == 0.5
  assert float(updates["backbone"]["layers_0"]["k"][0]) == 0.25
  assert float(updates["backbone"]["embed"]["embedding"][0, 0]) == 0.125


# --- other tasks and families -----------------------------------------------------------------


@pytest.mark.slow  # CI runs it; the default suite stays under 15 minutes
def test_regression_multilabel_pairs_relation_and_decoder_heads(tmp_path):
  """One short run each: a number (pearson), a set of labels, text pairs, a relation between
  marked spans, and a GPT backbone classifying at its last token."""
  rng = np.random.default_rng(0)
  pairs = [(f"{a} {b}", a, b) for a, b in (rng.choice(WORDS[:6], 2) for _ in range(120))]
  cases = {
    "regression": ("jsonl", [{"text": t, "label": float(t.count("good"))} for _, t in sentiment_rows(96, 3)],
                   {"task.problem": "regression"}, "eval_pearson"),
    "multi_label": ("jsonl", [{"text": t, "label": ",".join(sorted({w for w in t.split() if w in ("good", "bad")}) or ["none"])} for _, t in sentiment_rows(96, 4)],
                    {"task.problem": "multi_label"}, "eval_f1_micro"),
    "pairs": ("jsonl", [{"text": a, "other": b, "label": int(a.split()[0] == b)} for _, a, b in pairs],
              {"columns.text_pair": "other"}, "eval_accuracy"),
    "relation": ("jsonl", [{"text": f"{a} likes {b} today", "head": [0, len(a)], "tail": [len(a) + 7, len(a) + 7 + len(b)], "label": "self" if a == b else "other"} for _, a, b in pairs],
                 {"task.name": "relation"}, "eval_accuracy"),
  }  # fmt: skip
  for name, (fmt, rows, overrides, metric) in cases.items():
    text = "".join(json.dumps(r) + "\n" for r in rows)
    c = lstm_config(tmp_path / name, num_train_steps=4, eval_every=0)
    if overrides.get("task.name") == "relation":
      c.task = config_finetune.task_block("relation")
    c.train_data = c.eval_data = f"{fmt}:" + files(tmp_path / name, "data.jsonl", text)
    for key, value in overrides.items():
      if key != "task.name":
        target, field = key.split(".")
        c[target][field] = value
    result = finetuning.train(config_finetune.from_config_dict(c), tmp_path / name / "workdir")
    assert np.isfinite(result[metric]), (name, result)
  # A decoder: GPT from scratch classifies at the last (EOS) token.
  c = lstm_config(tmp_path / "gpt", num_train_steps=4, eval_every=0)
  config_finetune.with_model_preset(c, "gpt", "tiny")
  c.model.update(num_layers=1, embed_dim=16, num_heads=2, mlp_dim=32, max_len=64)
  c.task.max_len = 64
  c.tokenizer.kind = "byte"
  result = finetuning.train(config_finetune.from_config_dict(c), tmp_path / "gpt" / "workdir")
  assert 0 <= result["eval_accuracy"] <= 1


def test_word_tokenizer_is_deterministic_and_round_trips():
  tok = tokenizers.train_tokenizer(
    tokenizers.TokenizerConfig(kind="word", lowercase=True, vocab_size=20),
    ["The cat sat. The dog, the cat!"],
  )
  assert tok.encode("the cat") == tok.encode("The CAT")
  again = tokenizers.tokenizer_from_json(json.loads(json.dumps(tok.to_json())))
  assert again.encode("the zebra sat") == tok.encode("the zebra sat")
  assert tok.encode("zebra") == [tok.special_ids["unk"]]
  chars = tok.char_ids(["Cat", ""], 4)
  assert chars.shape == (2, 4) and chars[1].sum() == 0 and chars[0, 0] != chars[0, 1]


@pytest.mark.parametrize(
  "head, outputs, shape", [("sequence", 3, (2, 3)), ("token", 5, (2, 6, 5)), ("span", 2, (2, 6, 2))]
)
@pytest.mark.parametrize("family", ["bert", "gpt", "lstm"])
def test_head_shapes_per_task(family, head, outputs, shape):
  """Sequence heads give (B, labels), token heads (B, T, labels), span heads (B, T, 2), on
  every backbone kind; the head's parameters sit beside 'backbone' under Hugging Face's names."""
  from flaxlm.models import heads

  fam = registry.family_of(family)
  preset = {"bert": "bert_tiny", "gpt": "tiny", "lstm": "bilstm"}[family]
  config = fam.presets[preset].__class__(**{**fam.presets[preset].__dict__, "vocab_size": 64})
  model = heads.TaskModel(fam.module_cls(config), fam.features, head, outputs)
  batch = heads.dummy_batch(2, 6)
  batch["segment_ids"] = np.array([[1] * 6, [1, 1, 1, 0, 0, 0]], np.int32)
  variables = model.init(jax.random.PRNGKey(0), batch)
  assert set(variables["params"]) == {"backbone", heads.HEAD_NAMES[head]}
  assert model.apply(variables, batch).shape == shape


def test_reading_a_config_loads_no_data_library():
  """flaxlm.config and the fine-tuning config import neither TFDS, Grain nor TensorFlow."""
  import subprocess
  import sys

  code = (
    "import sys, flaxlm.config, flaxlm.config.finetuning; "
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow_datasets', 'grain', 'tensorflow')))"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "[]"
