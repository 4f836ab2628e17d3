"""The package's layout as a contract: its modules form layers, each importing only its own
layer and those below (function-level imports count too), and no import cycle anywhere.
A new module joins a layer here; an import against the order fails with both names."""

import ast
import pathlib

from conftest import REPO

# Bottom to top; each subpackage is one layer. A module matches the longest prefix listed.
LAYERS = [
  ("base", ["errors", "workdir"]),  # the error types; the run folder and its paths
  ("nn", ["nn"]),  # projection, attention, layers, sharding rules, losses
  ("data", ["data"]),  # sources, formats, tokenizers, the input pipeline
  ("models", ["models"]),  # families, heads, the registry, parameter trees
  ("objectives", ["objectives"]),  # pretraining objectives: batches and losses
  ("decode", ["decode"]),  # sampling, beam search, encoder-decoder decoding
  ("tasks", ["tasks"]),  # fine-tuning tasks: inputs, heads, metrics
  ("config", ["config"]),  # run configs of both jobs, typed
  ("train", ["train"]),  # the engine: state and steps, optimizer, checkpoints, loop
  ("convert", ["convert"]),  # Hugging Face import and export
  ("pretraining", ["pretraining"]),  # job one: run, load, transfer, memory
  ("finetuning", ["finetuning"]),  # job two: run, load, evaluation, k-fold
  ("explain", ["explain"]),  # attention maps and attributions of any workdir's model
  ("search", ["search"]),  # hyperparameter search: trials are runs of either job
  ("entry", ["", "cli", "data.prepare", "convert.__main__", "explain.__main__",
             "search.__main__"]),
]  # fmt: skip


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in (REPO / "flaxlm").rglob("*.py"):
    parts = path.relative_to(REPO / "flaxlm").with_suffix("").parts
    out[".".join(p for p in parts if p != "__init__")] = path
  return out


def _imports(modules: dict) -> dict[str, set[str]]:
  """module -> the flaxlm modules it imports, anywhere in its file."""

  def resolve(name: str) -> str | None:
    name = name.removeprefix("flaxlm").lstrip(".")
    while name not in modules and name:
      name = name.rpartition(".")[0]
    return name if name in modules else None

  graph = {}
  for name, path in modules.items():
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flaxlm"):
        for alias in node.names:  # `from flaxlm import x` imports the module flaxlm.x
          found.add(resolve(f"{node.module}.{alias.name}") or resolve(node.module))
      elif isinstance(node, ast.Import):
        found |= {resolve(a.name) for a in node.names if a.name.startswith("flaxlm")}
    graph[name] = {m for m in found if m is not None and m != name}
  return graph


def _layer(module: str) -> int:
  best, depth = None, -1
  for i, (_, prefixes) in enumerate(LAYERS):
    for prefix in prefixes:
      if module == prefix or (prefix and module.startswith(prefix + ".")):
        if len(prefix) > depth:
          best, depth = i, len(prefix)
  assert best is not None or module == "", f"flaxlm.{module} is in no layer of {__file__}"
  return best if best is not None else len(LAYERS) - 1


def test_every_import_goes_to_its_own_layer_or_below():
  graph = _imports(_modules())
  upward = sorted(
    f"flaxlm.{a or '__init__'} ({LAYERS[_layer(a)][0]}) imports flaxlm.{b} ({LAYERS[_layer(b)][0]})"
    for a, targets in graph.items()
    for b in targets
    if _layer(b) > _layer(a)
  )
  assert not upward, "\n".join(upward)


def test_no_import_cycles():
  graph = _imports(_modules())
  cycles, state = [], {}

  def visit(node, path):
    state[node] = "open"
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        cycles.append(path[path.index(nxt) :] + [nxt])
      elif nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = "done"

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert not cycles, [" -> ".join(c) for c in cycles]


def test_reading_a_config_imports_no_engine():
  import subprocess
  import sys

  code = ("import sys, flaxlm.config.finetuning, flaxlm.config; "
          "print(sorted(m for m in sys.modules if m in ('flaxlm.train.loop', 'flaxlm.train.steps', "
          "'flaxlm.train.checkpoint', 'grain', 'orbax.checkpoint')))")  # fmt: skip
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
  assert out.stdout.strip() == "[]", out.stderr
