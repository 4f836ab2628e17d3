"""The fine-tuning half of the bad-input catalogue (test_bad_inputs.py holds pretraining's):
finetune.py training, --mode=evaluate and --mode=predict, and `python -m flaxlm.convert
export`. Each mistake gets one line naming the culprit (a FlaxlmError, which the entry points
print without a traceback); config mistakes are found before any data is read, data and task
mistakes before any training step, and a refused rerun leaves the workdir's checkpoints
byte-identical and evaluating as before.

Config cases go through `cli.typed_config`, the order finetune.py validates in; test_cli.py
runs the four mistakes issue 30 found through finetune.py itself."""

import json

import pytest
from samples import files, set_keys
from test_bad_inputs import assert_one_line, refused_on_a_copy

from flaxlm import cli, errors
from flaxlm.config import dump_config_json
from flaxlm.config import finetuning as config_finetune
from flaxlm.data import formats
from flaxlm.finetuning import load as finetuned
from flaxlm.finetuning import run as finetuning
from flaxlm.train import loop

TRAIN = "label\ttext\n" + "0\tbad film\n1\tgood film\n0\tdull plot\n1\tfine cast\n" * 4
DEV = "label\ttext\n0\tbad\n1\tgood\n"


def ft_config(tmp, task: str = "classification", **overrides):
  """A tiny word-level BiLSTM sentiment run (one step), with a task block and overrides."""
  c = config_finetune.finetune_config()
  config_finetune.with_model_preset(c, "lstm", "bilstm")
  c.model.update(embed_dim=8, hidden_dim=8)
  c.tokenizer.kind = "word"
  c.task = config_finetune.task_block(task)
  c.train_data = "tsv:" + files(tmp, "train.tsv", TRAIN)
  c.eval_data = "tsv:" + files(tmp, "dev.tsv", DEV)
  c.batch_size = c.eval_batch_size = 8
  c.num_train_steps, c.eval_every, c.checkpoint_every = 1, 0, 0
  if "model_preset" in overrides:  # (family, preset, model fields)
    family, preset, fields = overrides["model_preset"]
    config_finetune.with_model_preset(c, family, preset)
    c.model.update(fields)
  return set_keys(c, {k: v for k, v in overrides.items() if k != "model_preset"})


def typed(c):
  """The run config as finetune.py reads it (convert, then the step and batch keys)."""
  return cli.typed_config(c, config_finetune.from_config_dict)


def jsonl(tmp, name, rows) -> str:
  return "jsonl:" + files(tmp, name, "".join(json.dumps(r) + "\n" for r in rows))


GPT = ("gpt", "tiny", dict(num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, max_len=64))
GPT_UNTIED = ("gpt", "tiny", {**GPT[2], "tie_embeddings": False})
T5 = ("encdec", "t5_tiny", dict(num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32))
BYTE = {"tokenizer.kind": "byte"}


# --- refused on reading the config, before any data is read -----------------------------------

# name -> (task, overrides or a function of tmp_path giving them, text the message names)
CONFIG_CASES = {
  "task_typo": ("classification", {"task.name": "classifcation"}, "task.name='classifcation' is unknown"),
  "task_key_typo": ("classification", {"task.max_length": 64}, "keys ['max_length']"),
  "unknown_config_key": ("classification", {"learning_rat": 1e-3}, "did you mean learning_rate"),
  "unknown_model_key": ("classification", {"model.hidden_size": 8}, "keys ['hidden_size']"),
  "train_data_empty_spec": ("classification", {"train_data": ""}, "train_data is empty"),
  "train_data_missing": ("classification", {"train_data": "tsv:/no/such.tsv"}, "config.train_data: /no/such.tsv does not exist"),
  "train_data_format_typo": ("classification", {"train_data": "tab:/x.tsv"}, "config.train_data='tab:/x.tsv'"),
  "eval_data_missing": ("classification", {"eval_data": "jsonl:/no/dev.jsonl"}, "config.eval_data: /no/dev.jsonl does not exist"),
  "eval_data_is_a_directory": ("classification", lambda t: {"eval_data": f"tsv:{t}"}, "is a directory; name the file"),
  "pairs_one_file": ("seq2seq", lambda t: {"train_data": "pairs:" + files(t, "a.en", "a\n")}, "pairs: takes two files"),
  "kfold_one": ("classification", {"kfold": 1}, "kfold=1"),
  "no_dev_set": ("classification", {"eval_data": "", "val_fraction": 0.0}, "val_fraction=0.0"),
  "accum_steps_zero": ("classification", {"accum_steps": 0}, "accum_steps=0; it must be at least 1"),
  "batch_not_divisible": ("classification", {"batch_size": 12}, "batch_size=12 must be divisible"),
  "early_stopping_mode": ("classification", {"early_stopping.mode": "maximum"}, "early_stopping.mode='maximum'"),
  "early_stopping_metric_unknown": ("classification", {"early_stopping.metric": "bleu"}, "early_stopping.metric='bleu': task 'classification' does not report it"),
  "early_stopping_metric_of_regression": ("classification", {"task.problem": "regression", "early_stopping.metric": "accuracy"}, "use one of ['eval_loss', 'eval_pearson'"),
  "early_stopping_metric_loss_only": ("seq2seq", {"task.generate_in_eval": False, "early_stopping.metric": "rougeL"}, "use one of ['eval_loss']"),
  "init_from_missing": ("classification", {"init_from": "/tmp/no_such_pretraining_run", "init_from_command": "python train.py --config=configs/bert_tiny.py --workdir=/tmp/no_such_pretraining_run"}, "create it with: python train.py --config=configs/bert_tiny.py"),
  "init_from_not_a_workdir": ("classification", lambda t: {"init_from": str(t)}, "holds no pretraining checkpoint"),
  "init_from_hf_missing": ("classification", {"init_from": "hf:/no/such/model"}, "/no/such/model"),
  # task fields at and past their bounds, each declared beside its field
  "max_len_zero": ("classification", {"task.max_len": 0}, "task.max_len=0 must be at least 1"),
  "problem_typo": ("classification", {"task.problem": "binary"}, "task.problem='binary'"),
  "threshold_above_one": ("classification", {"task.problem": "multi_label", "task.threshold": 1.5}, "task.threshold=1.5 must be in [0.0, 1.0]"),
  "dropout_rate_one": ("classification", {"task.dropout_rate": 1.0}, "task.dropout_rate=1.0 must be in [0.0, 1.0)"),
  "max_chars_zero": ("classification", {"task.max_chars": 0}, "task.max_chars=0 must be at least 1"),
  "class_weights_malformed": ("classification", {"task.class_weights": "1,x"}, "task.class_weights='1,x'"),
  "class_weights_not_positive": ("classification", {"task.class_weights": "1,0"}, "one positive weight per label"),
  "label_separator_empty": ("classification", {"task.problem": "multi_label", "task.label_separator": ""}, "task.label_separator=''"),
  "relation_max_len_negative": ("relation", {"task.max_len": -4}, "task.max_len=-4 must be at least 1"),
  "token_max_len_zero": ("token_classification", {"task.max_len": 0}, "task.max_len=0 must be at least 1"),
  "qa_doc_stride_past_window": ("qa", {"task.max_len": 128, "task.doc_stride": 100}, "task.doc_stride=100 must be smaller than the passage room"),
  "qa_doc_stride_zero": ("qa", {"task.doc_stride": 0}, "task.doc_stride=0 must be at least 1"),
  "qa_max_answer_len_zero": ("qa", {"task.max_answer_len": 0}, "task.max_answer_len=0 must be at least 1"),
  "qa_max_question_len_zero": ("qa", {"task.max_question_len": 0}, "task.max_question_len=0"),
  "qa_n_best_zero": ("qa", {"task.n_best": 0}, "task.n_best=0 must be at least 1"),
  "seq2seq_target_len_one": ("seq2seq", {"task.target_len": 1}, "task.target_len=1 must be at least 2"),
  "seq2seq_pack_zero": ("seq2seq", {"task.pack": 0}, "task.pack=0 must be at least 1"),
  "seq2seq_beam_size_negative": ("seq2seq", {"task.beam_size": -1}, "task.beam_size=-1 must be at least 0"),
  "seq2seq_alpha_negative": ("seq2seq", {"task.alpha": -0.5}, "task.alpha=-0.5 must be at least 0.0"),
  "seq2seq_max_new_tokens_negative": ("seq2seq", {"task.max_new_tokens": -1}, "task.max_new_tokens=-1"),
  "seq2seq_no_repeat_with_beams": ("seq2seq", {"task.no_repeat_ngram": 3}, "no_repeat_ngram applies to greedy decoding"),
  "sft_no_repeat_negative": ("sft", {"task.no_repeat_ngram": -2}, "task.no_repeat_ngram=-2 must be at least 0"),
  "sft_pack_zero": ("sft", {"task.pack": 0}, "task.pack=0 must be at least 1"),
  "sft_template_without_prompt": ("sft", {"task.template": "Q: {question}\nA: "}, "must contain {prompt}"),
  "sft_turn_template_without_content": ("sft", {"task.turn_template": "<{role}>"}, "must contain {content}"),
}  # fmt: skip


def _case(table, name, tmp_path):
  task, overrides, needle = table[name]
  return task, (overrides(tmp_path) if callable(overrides) else overrides), needle


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_config_mistakes_fail_before_data_with_one_line(name, tmp_path, monkeypatch):
  task, overrides, needle = _case(CONFIG_CASES, name, tmp_path)
  monkeypatch.setattr(formats, "read", lambda *a, **k: pytest.fail("data was read"))
  with pytest.raises(Exception) as info:
    finetuning.train(typed(ft_config(tmp_path, task, **overrides)), tmp_path / "workdir")
  assert_one_line(info.value, needle)


# --- found reading the data, or by the task once it has its tokenizer: before any step --------

WORDS = {"words": ["EU", "rejects", "German", "call"], "tags": ["B-ORG", "O", "B-MISC", "O"]}
NER = {"task.max_len": 16}
DATA_CASES = {
  "missing_column": ("classification", {"columns.text": "sentence"}, "train.tsv:2 has no column 'sentence'"),
  "tsv_wrong_field_count": ("classification", lambda t: {"train_data": "tsv:" + files(t, "ragged.tsv", "label\ttext\n0\ta\tb\n")}, "ragged.tsv:2 has 3 fields"),
  "csv_wrong_field_count": ("classification", lambda t: {"train_data": "csv:" + files(t, "ragged.csv", 'label,text\n0,"a"\n1,b,c\n')}, "ragged.csv:3 has 3 fields"),
  "tsv_not_utf8": ("classification", lambda t: {"train_data": "tsv:" + files(t, "latin.tsv", b"label\ttext\n0\tcaf\xe9\n")}, "latin.tsv:2 is not UTF-8"),
  "tsv_header_only": ("classification", lambda t: {"train_data": "tsv:" + files(t, "empty.tsv", "label\ttext\n")}, "holds no records"),
  "jsonl_malformed": ("classification", lambda t: {"train_data": "jsonl:" + files(t, "bad.jsonl", '{"text": "a", "label": 1}\n{"text": oops}\n')}, "bad.jsonl:2 is not valid JSON"),
  "jsonl_not_an_object": ("classification", lambda t: {"train_data": "jsonl:" + files(t, "list.jsonl", '["a", 1]\n')}, "list.jsonl:1 is a JSON list, not an object"),
  "one_label_only": ("classification", lambda t: {"train_data": "tsv:" + files(t, "one.tsv", "label\ttext\n1\tgood\n1\tfine\n")}, "has 1 label (['1']); need 2 or more"),
  "unknown_label_at_eval": ("classification", lambda t: {"eval_data": "tsv:" + files(t, "dev2.tsv", "label\ttext\n7\tmeh\n")}, "dev2.tsv:2: label '7' is not one of the training labels"),
  "max_len_no_room": ("classification", {"task.max_len": 2, "tokenizer.special_tokens": "bert"}, "task.max_len=2 leaves no room for text: it must hold the task's 2 special tokens"),
  "class_weights_count": ("classification", {"task.class_weights": "1,2,3"}, "task.class_weights has 3 weights for 2 labels"),
  "class_weights_multi_label": ("classification", {"task.problem": "multi_label", "task.class_weights": "1,2"}, "class_weights applies to single_label"),
  "padding_free_on_lstm": ("classification", {"task.padding_free": True}, "which model family 'lstm' does not read"),
  "conll_one_column": ("token_classification", lambda t: {**NER, "train_data": "conll:" + files(t, "one.conll", "EU B-ORG\nrejects O\nLonely\n\n")}, "one.conll:3 has 1 column ('Lonely')"),
  "conll_tag_not_bio": ("token_classification", lambda t: {**NER, "train_data": "conll:" + files(t, "pos.conll", "EU NNP\nrejects VBZ\n\n")}, "tag 'NNP' of token 1 is not O, B-<type> or I-<type>"),
  "conll_tag_column_out_of_range": ("token_classification", lambda t: {**NER, "columns.tag_index": 3, "train_data": "conll:" + files(t, "two.conll", "EU B-ORG\n\n")}, "two.conll:1 has 2 columns"),
  "words_and_tags_differ": ("token_classification", lambda t: {**NER, "train_data": jsonl(t, "ner.jsonl", [{"words": ["a", "b"], "tags": ["O"]}])}, "ner.jsonl:1: 2 words but 1 tags"),
  "unknown_tag_at_eval": ("token_classification", lambda t: {**NER, "train_data": jsonl(t, "ner.jsonl", [WORDS] * 8), "eval_data": jsonl(t, "dev.jsonl", [{"words": ["x"], "tags": ["B-LOC"]}])}, "dev.jsonl:1: tag 'B-LOC' is not one of the training tags"),
  "token_max_len_no_room": ("token_classification", lambda t: {"task.max_len": 2, "tokenizer.special_tokens": "bert", "train_data": jsonl(t, "ner.jsonl", [WORDS] * 8)}, "task.max_len=2 leaves no room"),
  "squad_malformed": ("qa", lambda t: {**BYTE, "model_preset": GPT, "task.max_len": 64, "task.doc_stride": 16, "task.max_question_len": 16, "train_data": "squad:" + files(t, "squad.json", '{"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "1"}]}]}]}')}, "squad.json:data[0].paragraphs[0].qas[0] is malformed"),
  "squad_not_squad": ("qa", lambda t: {**BYTE, "model_preset": GPT, "task.max_len": 64, "task.doc_stride": 16, "task.max_question_len": 16, "train_data": "squad:" + files(t, "list.json", "[1, 2]")}, "list.json is not SQuAD JSON"),
  "pairs_line_counts_differ": ("seq2seq", lambda t: {**BYTE, "model_preset": T5, "train_data": f"pairs:{files(t, 'a.en', 'a' + chr(10) + 'b' + chr(10))},{files(t, 'a.de', 'x' + chr(10))}"}, "has 2 lines but"),
  "relation_span_outside": ("relation", lambda t: {"train_data": jsonl(t, "rel.jsonl", [{"text": "ab", "head": [0, 1], "tail": [1, 9], "label": "x"}, {"text": "ab", "head": [0, 1], "tail": [1, 2], "label": "y"}])}, "rel.jsonl:1: entity span [1, 9) is outside the text"),
  "qa_on_encoder_decoder": ("qa", lambda t: {**BYTE, "model_preset": T5, "task.max_len": 64, "task.doc_stride": 16, "task.max_question_len": 16, "train_data": "squad:" + files(t, "s.json", '{"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "1", "question": "a?", "answers": [{"text": "b", "answer_start": 1}]}]}]}]}')}, "extractive QA needs an encoder or decoder"),
  "seq2seq_on_an_encoder": ("seq2seq", lambda t: {"train_data": jsonl(t, "s.jsonl", [{"text": "a", "target": "b"}] * 4)}, "generates text: use a decoder (gpt) or encdec"),
  "sft_on_an_encoder_decoder": ("sft", lambda t: {**BYTE, "model_preset": T5, "train_data": jsonl(t, "s.jsonl", [{"prompt": "a", "response": "b"}] * 4)}, "task 'sft' tunes decoders"),
  "sft_max_len_below_template": ("sft", lambda t: {**BYTE, "model_preset": GPT, "task.max_len": 8, "train_data": jsonl(t, "s.jsonl", [{"prompt": "a", "response": "b"}] * 4)}, "task.max_len=8 leaves no room for text: it must hold the task's 34 template tokens and EOS"),
  "no_repeat_ngram_on_encoder_decoder": ("seq2seq", lambda t: {**BYTE, "model_preset": T5, "task.beam_size": 0, "task.no_repeat_ngram": 2, "train_data": jsonl(t, "s.jsonl", [{"text": "a", "target": "b"}] * 4)}, "task.no_repeat_ngram applies to decoders"),
  "freeze_backbone_of_a_tied_lm_head": ("sft", lambda t: {**BYTE, "model_preset": GPT, "task.max_len": 64, "freeze_backbone": True, "train_data": jsonl(t, "s.jsonl", [{"prompt": "a", "response": "b"}] * 4)}, "freeze_backbone=True would freeze every parameter: task 'sft'"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_data_and_task_mistakes_fail_before_a_step(name, tmp_path, monkeypatch):
  task, overrides, needle = _case(DATA_CASES, name, tmp_path)
  monkeypatch.setattr(loop, "run", lambda *a, **k: pytest.fail("training started"))
  if "eval_data" not in overrides and task != "classification":
    overrides = {**overrides, "eval_data": overrides["train_data"]}
  with pytest.raises(Exception) as info:
    finetuning.train(typed(ft_config(tmp_path, task, **overrides)), tmp_path / "workdir")
  assert_one_line(info.value, needle)
  checkpoints = tmp_path / "workdir" / "checkpoints"
  assert not checkpoints.exists() or not any(checkpoints.iterdir())


# --- a trained workdir: evaluate, predict and export mistakes; refused reruns keep it ---------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 2-step BiLSTM run with a checkpoint, and its dev accuracy."""
  base = tmp_path_factory.mktemp("trained_ft")
  c = ft_config(base, num_train_steps=2, checkpoint_every=2)
  result = finetuning.train(typed(c), base / "workdir", dump_config_json(c))  # as finetune.py
  return base / "workdir", c, result["eval_accuracy"]


def _evaluate(workdir, data, **kw):
  return finetuned.evaluate(workdir, data, **kw)


def _predict(workdir, data, output="{tmp}/out.jsonl", **kw):
  return lambda tmp: finetuned.predict(workdir, data, output.format(tmp=tmp), **kw)


def _export(workdir):
  from flaxlm.convert.__main__ import main

  return lambda tmp: main(["export", str(workdir), str(tmp / "hf")])


# name -> (what runs, given the trained workdir, its config and tmp_path; text of the message)
MODE_CASES = {
  "evaluate_empty_workdir": (lambda w, c, t: _evaluate(t / "empty", c.eval_data), "no fine-tuned checkpoint in"),
  "predict_empty_workdir": (lambda w, c, t: _predict(t / "empty", c.eval_data)(t), "no fine-tuned checkpoint in"),
  "evaluate_missing_eval_data": (lambda w, c, t: _evaluate(w, "tsv:/no/dev.tsv"), "config.eval_data: /no/dev.tsv does not exist"),
  "evaluate_unknown_label": (lambda w, c, t: _evaluate(w, "tsv:" + files(t, "d.tsv", "label\ttext\n9\tx\n")), "d.tsv:2: label '9' is not one of the training labels"),
  "evaluate_missing_column": (lambda w, c, t: _evaluate(w, "tsv:" + files(t, "d.tsv", "label\treview\n1\tx\n")), "d.tsv:2 has no column 'text'"),
  "evaluate_decoding_flag_of_another_task": (lambda w, c, t: _evaluate(w, c.eval_data, task={"beam_size": 4}), "keys ['beam_size'] that task 'classification' does not know"),
  "predict_output_is_a_directory": (lambda w, c, t: _predict(w, c.eval_data, "{tmp}")(t), "is a directory; name a file"),
  "predict_output_unwritable": (lambda w, c, t: _predict(w, c.eval_data, "/proc/flaxlm/out.jsonl")(t), "--output=/proc/flaxlm/out.jsonl: cannot create its folder"),
  "export_empty_workdir": (lambda w, c, t: _export(t / "empty")(t), "no checkpoint"),
  "export_a_bilstm": (lambda w, c, t: _export(w)(t), "family='lstm'"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(MODE_CASES))
def test_evaluate_predict_export_mistakes_fail_with_one_line(name, trained, tmp_path):
  workdir, c, _ = trained
  (tmp_path / "empty").mkdir()
  run, needle = MODE_CASES[name]
  with pytest.raises((errors.FlaxlmError, SystemExit)) as info:
    run(workdir, c, tmp_path)
  error = info.value
  if isinstance(error, SystemExit):  # python -m flaxlm.convert exits with its one line
    error = errors.FlaxlmError(str(error.code).partition(": ")[2])
  assert_one_line(error, needle)


def test_predict_creates_the_folder_of_its_output(trained, tmp_path):
  workdir, c, _ = trained
  out = tmp_path / "new" / "deeper" / "predictions.jsonl"
  assert finetuned.predict(workdir, c.eval_data, str(out)) == 2
  assert len(out.read_text().splitlines()) == 2


RERUN_CASES = {
  "changed_batch_size": ({"batch_size": 16}, "batch_size (8 -> 16)"),
  "changed_seed": ({"seed": 3}, "seed (0 -> 3)"),
  "changed_task_field": ({"task.max_len": 64}, "task.max_len (128 -> 64)"),
  "changed_train_data": (lambda t: {"train_data": "tsv:" + files(t, "other.tsv", TRAIN + "1\tgreat\n")}, "train_data ("),
  "changed_columns": ({"columns.label": "label|y"}, "columns"),
  "changed_task": ({"task.name": "relation"}, "task_name ('classification' -> 'relation')"),
  "changed_architecture": ({"model.hidden_dim": 16}, "model keys ['hidden_dim'] differ"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(RERUN_CASES))
def test_refused_reruns_keep_the_workdir(name, trained, tmp_path):
  """Each refused rerun leaves the checkpoints byte-identical, and the workdir still
  evaluates to the accuracy its training ended with."""
  source, ran, accuracy = trained
  overrides, needle = RERUN_CASES[name]
  overrides = overrides(tmp_path) if callable(overrides) else overrides
  rerun = lambda w: finetuning.train(  # as the library (no config JSON)
    typed(ft_config(source.parent, num_train_steps=3, checkpoint_every=2, **overrides)), w
  )
  workdir, _ = refused_on_a_copy(source, tmp_path, rerun, needle)
  assert finetuned.evaluate(workdir, ran.eval_data)["eval_accuracy"] == accuracy


def test_every_task_metric_name_is_reported(trained):
  """What early_stopping.metric may name is what an evaluation reports (classification here;
  the others' lists are checked against their scoring functions' keys by name)."""
  from flaxlm.tasks import TASKS

  workdir, c, _ = trained
  reported = set(finetuned.evaluate(workdir, c.eval_data))
  task = TASKS["classification"]
  names = {"eval_" + n for n in task.metric_names(task.Config())} - {"eval_roc_auc", "eval_pr_auc"}
  assert names <= reported, names - reported


def test_the_catalogue_holds_forty_fine_tuning_cases():
  cases = len(CONFIG_CASES) + len(DATA_CASES) + len(MODE_CASES) + len(RERUN_CASES)
  assert cases >= 40, cases


def test_encode_gives_a_fine_tuned_model_the_batch_its_task_builds(trained):
  """flaxlm.encode on a fine-tuned Model (README's Python example): model.model.apply on its
  batch gives the logits whose argmax `flaxlm.predict` reports."""
  import numpy as np

  import flaxlm

  workdir, _, _ = trained
  model = flaxlm.load(workdir)
  texts = ["good film", "a dull plot indeed"]
  logits = model.model.apply({"params": model.params}, flaxlm.encode(model, texts))
  predicted = [r["prediction"] for r in flaxlm.predict(model, [{"text": t} for t in texts])]
  assert logits.shape == (2, 2)
  assert [model.task.labels[i] for i in np.argmax(logits, -1)] == predicted
