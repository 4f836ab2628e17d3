"""Evaluation's compiled call: predictions and loss sums in one call (what flaxlm.finetuning.evaluation
does) against two calls (what it did before), over a fine-tuned QA workdir's dev questions.

  python bench/eval_one_pass.py /tmp/cmrc2018 ../shared/data/cmrc2018/cmrc2018_dev.json 300

Prints the matrix products XLA compiles for each (equal counts: the forward passes merged)
and the seconds of each pass, alternated three times in this one process.
"""

import re
import sys
import time

import jax

from flaxlm.data import formats
from flaxlm.finetuning import evaluation
from flaxlm.finetuning import load as finetuned
from flaxlm.nn import sharding


def main(workdir: str, squad_path: str, questions: int) -> None:
  model = finetuned.load(workdir)
  task, trainable, params = model.task, model.trainable, model.params
  records = formats.read("squad:" + squad_path)[:questions]
  data = evaluation.eval_set(task, records, 32, task.config.max_len)
  on_mesh = sharding.batch_sharding(trainable.mesh)
  both_fn = evaluation._predict_and_loss(task, trainable)
  predict_fn = lambda p, b: task.predict(trainable.model, p, b)  # noqa: E731

  def products(fn) -> int:
    with trainable.context():
      hlo = jax.jit(fn).lower(params, sharding.to_global(data.batches[0], on_mesh))
      return len(re.findall(r" dot\(| convolution\(", hlo.compile().as_text()))

  print("matrix products: predictions", products(predict_fn), "loss",
        products(trainable.eval_loss), "both", products(both_fn))  # fmt: skip
  both, predict = trainable.jit_params_batch(both_fn), trainable.jit_params_batch(predict_fn)

  def two_calls():
    for b in data.batches:
      g = sharding.to_global(b, on_mesh)
      jax.device_get(predict(params, g))
      jax.device_get(trainable.eval_step(params, g))

  def one_call():
    for b in data.batches:
      jax.device_get(both(params, sharding.to_global(b, on_mesh)))

  two_calls(), one_call()  # compile
  seconds = {"two_calls": [], "one_call": []}
  for _ in range(3):
    for name, fn in (("two_calls", two_calls), ("one_call", one_call)):
      t = time.perf_counter()
      fn()
      seconds[name].append(round(time.perf_counter() - t, 2))
  print(seconds, "windows", data.count)
  print("ratio", round(sum(seconds["two_calls"]) / sum(seconds["one_call"]), 3))


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 300)
