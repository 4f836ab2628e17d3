"""Generate from a trained workdir's newest checkpoint (KV-cache decoding).

Decoder-only models (GPT) continue prompts, decoded as one batch (prompts of different
lengths are padded; the loop stops when every row has ended):
  python generate.py --workdir=/tmp/flaxlm_tiny --prompt="The " --max_new_tokens=200 \
      [--temperature=0.8] [--top_k=40] [--top_p=0.95] [--greedy] [--num_samples=2] [--seed=0]
  python generate.py --workdir=/tmp/flaxlm_tiny --prompt="The " --prompt="In " [--bf16]
  python generate.py --workdir=/tmp/flaxlm_tiny --prompt_file=prompts.txt  # one per line
  python generate.py --workdir=/tmp/flaxlm_tiny --prompt="The " --beam_size=4 [--alpha=0.6]
  python generate.py --workdir=/tmp/flaxlm_tiny --prompt="The " --greedy --no_repeat_ngram=3

A fine-tuned seq2seq or SFT workdir (finetune.py) generates the same way. Encoder-decoder
models (T5, Transformer) map each source line to a target line, with beam
search (--beam_size=4 --alpha=0.6), greedy decoding (--beam_size=0 --greedy) or sampling;
with --reference_file they print sacreBLEU (detokenized) against it:
  python generate.py --workdir=/tmp/mt --input_file=val.en --reference_file=val.de \
      --beam_size=4 [--output_file=hyp.de] [--max_new_tokens=64]
  python generate.py --workdir=/tmp/mt --prompt="A dog runs on the beach." --beam_size=4

The tokenizer and model config are read from the checkpoint, never from the current config.
`--workdir=hf:<dir>` decodes a Hugging Face folder (GPT-2, LLaMA, T5) imported by
flaxlm.convert, with the tokenizer it ships.
"""

import math
import sys

import jax.numpy as jnp
import optax
from absl import flags

from flaxlm import cli
from flaxlm.decode import seq2seq as seq2seq_decoding
from flaxlm.decode.sampling import SamplingConfig, beam_texts, sample_texts
from flaxlm.errors import ConfigError, DataError
from flaxlm.finetuning import load as finetuned
from flaxlm.models import registry
from flaxlm.nn import quantize
from flaxlm.pretraining.load import load_trained, saved_family
from flaxlm.train import ptq

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "a train.py workdir holding checkpoints/, or hf:<Hugging Face folder>."
)
_PROMPT = flags.DEFINE_multi_string(
  "prompt", [""], "text to continue, or (encoder-decoder) to map; repeat it for several."
)
_PROMPT_FILE = flags.DEFINE_string("prompt_file", "", "decoders: one prompt per line.")
_BF16 = flags.DEFINE_bool("bf16", False, "decoders: bfloat16 weights, compute and KV cache.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "tokens to generate at most.")
_TEMPERATURE = flags.DEFINE_float(
  "temperature", 0.8, "softmax temperature (ignored with --greedy)."
)
_TOP_K = flags.DEFINE_integer("top_k", 0, "keep the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus sampling: keep the smallest set with this mass.")
_GREEDY = flags.DEFINE_bool("greedy", False, "always take the most likely token.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "independent samples, decoded as one batch.")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed.")
_INPUT_FILE = flags.DEFINE_string("input_file", "", "encoder-decoder: one source per line.")
_REFERENCE_FILE = flags.DEFINE_string("reference_file", "", "target lines: print sacreBLEU.")
_OUTPUT_FILE = flags.DEFINE_string("output_file", "", "write the generated lines here.")
_BEAM_SIZE = flags.DEFINE_integer(
  "beam_size", None, "beams (0: greedy/sampling); default 4 for encoder-decoders, 0 for decoders."
)
_NO_REPEAT = flags.DEFINE_integer(
  "no_repeat_ngram", 0, "decoders, without beams: no n-gram of this size twice in an output."
)
_ALPHA = flags.DEFINE_float("alpha", 0.6, "beam length penalty ((5 + len) / 6) ** alpha.")
_QUANTIZE = flags.DEFINE_enum(
  "quantize", "", ["", "int8", "int4"],
  "weight-only quantized projections; decoders print the prompts' perplexity beside the float one.",
)  # fmt: skip
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "beam search: prompts or sources per batch.")


def _read_lines(path: str) -> list[str]:
  try:
    with open(path, encoding="utf-8") as f:
      return [line.rstrip("\n") for line in f]
  except OSError as e:
    raise DataError(f"cannot read {path}: {e.strerror}") from None
  except UnicodeDecodeError as e:
    raise DataError(f"{path} is not UTF-8 text ({e.reason}); convert it first") from None


def _sampling() -> SamplingConfig:
  temperature = 0.0 if _GREEDY.value else _TEMPERATURE.value
  return SamplingConfig(_MAX_NEW.value, temperature, _TOP_K.value, _TOP_P.value,
                        no_repeat_ngram=_NO_REPEAT.value)  # fmt: skip


def _translate(trainable, params, tokenizer):
  if _NO_REPEAT.value:
    raise ConfigError("--no_repeat_ngram applies to decoders; encoder-decoders use --beam_size")
  sources = _read_lines(_INPUT_FILE.value) if _INPUT_FILE.value else _PROMPT.value
  # Target positions stop at the model's max_len; beam search stops early at EOS anyway.
  max_len = min(_MAX_NEW.value, trainable.model.config.max_len)
  config = seq2seq_decoding.DecodeConfig(
    max_len=max_len,
    beam_size=4 if _BEAM_SIZE.value is None else _BEAM_SIZE.value,
    alpha=_ALPHA.value,
    sampling=_sampling(),
  )
  outputs = seq2seq_decoding.translate(
    trainable, params, tokenizer, sources, config, _BATCH_SIZE.value, _SEED.value
  )
  if _OUTPUT_FILE.value:
    with open(_OUTPUT_FILE.value, "w", encoding="utf-8") as f:
      f.write("".join(line + "\n" for line in outputs))
  else:
    for line in outputs[:20] if _REFERENCE_FILE.value else outputs:
      print(line)
  if _REFERENCE_FILE.value:
    references = _read_lines(_REFERENCE_FILE.value)
    if len(references) != len(sources):
      raise DataError(
        f"{_REFERENCE_FILE.value} has {len(references)} lines, the input {len(sources)}; "
        "they must align"
      )
    bleu = seq2seq_decoding.corpus_bleu(outputs, references)
    print(f"BLEU {bleu:.2f} (sacreBLEU, detokenized, {len(sources)} sentences)")


def _continue(trainable, params, tokenizer):
  prompts = _read_lines(_PROMPT_FILE.value) if _PROMPT_FILE.value else _PROMPT.value
  if _BEAM_SIZE.value:
    if _NUM_SAMPLES.value > 1 or _BF16.value or _NO_REPEAT.value:
      raise ConfigError("--beam_size decodes one float32 output a prompt: drop --num_samples, "
                        "--bf16 and --no_repeat_ngram, or use --beam_size=0")  # fmt: skip
    texts = beam_texts(trainable, params, tokenizer, prompts, _MAX_NEW.value, _BEAM_SIZE.value,
                       _ALPHA.value, _BATCH_SIZE.value)  # fmt: skip
    for j, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
      print(f"--- {'best beam' if len(prompts) == 1 else f'prompt {j}, best beam'} ---")
      print(f"{prompt}{text}")
    return
  texts = sample_texts(trainable, params, tokenizer, prompts, _sampling(), _SEED.value,
                       _NUM_SAMPLES.value, _BF16.value)  # fmt: skip
  for j, (prompt, samples) in enumerate(zip(prompts, texts, strict=True)):
    for i, text in enumerate(samples):
      which = f"sample {i}" if len(prompts) == 1 else f"prompt {j}, sample {i}"
      print(f"--- {which} ---\n{prompt}{text}")


def _refuse(trainable, params, tokenizer):
  raise DataError(
    f"{_WORKDIR.value} holds an encoder (masked LM), which does not generate text; decoders "
    "(GPT) and encoder-decoders (T5, Transformer) do"
  )


def _quantized(trainable, params, tokenizer, kind: str, model=None):
  """(trainable, params) with --quantize's weights, after one line comparing them with the
  float model: parameter bytes, and for decoders the perplexity of the prompts."""
  mode = _QUANTIZE.value
  if _BF16.value:
    raise ConfigError("--bf16 and --quantize each choose the weights' type; drop one")
  if model is not None:  # a fine-tune: LoRA adapters are merged first
    q = finetuned.quantized(model, mode)
    qtrainable, qparams = q.trainable, q.params
  else:
    qtrainable, qparams = ptq.quantized(trainable, params, mode)
  mib = lambda tree: quantize.weight_bytes(tree) / 2**20
  line = f"{mode} weights: parameters {mib(qparams):.1f} MiB (float {mib(params):.1f} MiB)"
  prompts = _read_lines(_PROMPT_FILE.value) if _PROMPT_FILE.value else _PROMPT.value
  if kind == "decoder" and prompts:
    floats = _perplexity(trainable, params, tokenizer, prompts)
    quants = _perplexity(qtrainable, qparams, tokenizer, prompts)
    line += (f"; perplexity of the prompts {quants:.3f} (float {floats:.3f}, "
             f"{100 * (quants / floats - 1):+.2f}%)")  # fmt: skip
  print(line)
  return qtrainable, qparams


def _perplexity(trainable, params, tokenizer, texts: list[str]) -> float:
  """exp(mean next-token NLL) over the tokens of `texts` (each scored on its own)."""
  nll, count = 0.0, 0
  for text in texts:
    ids = jnp.asarray([tokenizer.encode(text)], jnp.int32)
    if ids.shape[1] < 2:
      continue
    with trainable.context():
      logits = trainable.model.apply({"params": params}, ids[:, :-1])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
    nll, count = nll + float(losses.sum()), count + losses.size
  return math.exp(nll / max(count, 1))


# How each kind of model (registry.Family.kind) generates.
GENERATORS = {"decoder": _continue, "encdec": _translate, "encoder": _refuse}


def main(argv):
  cli.parse_flags(argv)
  cli.setup_logging()
  if not _WORKDIR.value:
    sys.exit("generate.py: --workdir is required (the directory train.py wrote)")
  with cli.user_errors("generate.py"):
    if finetuned.workdir_kind(_WORKDIR.value) == "finetune":  # a seq2seq or SFT fine-tune
      model = finetuned.load(_WORKDIR.value)
      if model.model is not model.trainable.model or not hasattr(model.task, "generate"):
        raise DataError(
          f"{_WORKDIR.value} holds a {model.task.name} model, which does not generate text"
        )
      trainable, params, tokenizer = model.trainable, model.params, model.tokenizer
      family = model.family
    else:
      model = None
      trainable, params, tokenizer = load_trained(_WORKDIR.value)
      family = saved_family(_WORKDIR.value)
    kind = registry.family_of(family).kind
    if _QUANTIZE.value and kind != "encoder":
      trainable, params = _quantized(trainable, params, tokenizer, kind, model)
    GENERATORS[kind](trainable, params, tokenizer)


if __name__ == "__main__":
  main(sys.argv)
