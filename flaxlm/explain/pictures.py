"""PNG pictures of attention maps and attributions (matplotlib, Agg: no display needed).

Every figure has a fixed size in inches at a fixed DPI and is saved without tight cropping,
so its pixel size is known before it is drawn: each writer returns {file name: (width,
height)} and the command line prints it (the tests open each PNG and compare).
"""

from __future__ import annotations

import math
import pathlib

import numpy as np

from flaxlm.train import reporting


def _panel_inches(rows: int, columns: int) -> tuple[float, float]:
  """A heatmap panel big enough for its tick labels: ~0.22 inch per token, 2.5 to 7."""
  side = lambda n: min(max(0.22 * n + 1.2, 2.5), 7.0)
  return side(columns), side(rows)


def _heatmap(ax, m: np.ndarray, rows: list[str], columns: list[str], title: str):
  ax.imshow(m, cmap="viridis", vmin=0.0, vmax=max(float(m.max()), 1e-6), aspect="auto")
  ax.set_title(title, fontsize=8)
  ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=6)
  ax.set_yticks(range(len(rows)), rows, fontsize=6)


def _grid(panels: list[tuple[str, np.ndarray]], rows, columns, ncols: int, title: str, path):
  """One heatmap per (title, map) panel, `ncols` to a row; returns the PNG's pixel size."""
  plt = reporting.pyplot(needed_by="explain")
  w, h = _panel_inches(len(rows), len(columns))
  nrows = math.ceil(len(panels) / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows + 0.4), squeeze=False)
  for i, ax in enumerate(axes.flat):
    if i < len(panels):
      _heatmap(ax, panels[i][1], rows, columns, panels[i][0])
    else:
      ax.axis("off")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0, 1, 0.97))
  return reporting.save_figure(fig, path)


def attention_pngs(maps, out: pathlib.Path) -> dict[str, tuple[int, int]]:
  """For each kind of map: `<kind>_layer<i>.png` (a panel per head and one for their mean,
  query tokens down, key tokens across) and `<kind>_mean.png` (each layer's head mean)."""
  written = {}
  for kind, m in maps.maps.items():  # (L, N, T, S)
    layers, heads = m.shape[:2]
    rows, columns = maps.rows[kind], maps.columns[kind]
    ncols = math.ceil(math.sqrt(heads + 1))
    for layer in range(layers):
      panels = [(f"head {i}", m[layer, i]) for i in range(heads)]
      panels.append(("mean over heads", m[layer].mean(0)))
      name = f"{kind}_layer{layer}.png"
      title = f"{kind} attention, layer {layer} (rows: queries, columns: keys)"
      written[name] = _grid(panels, rows, columns, ncols, title, out / name)
    panels = [(f"layer {i}", m[i].mean(0)) for i in range(layers)]
    name = f"{kind}_mean.png"
    title = f"{kind} attention, mean over heads, per layer"
    written[name] = _grid(panels, rows, columns, min(layers, 4), title, out / name)
  return written


def attribution_png(a, out: pathlib.Path, name: str = "attribution.png") -> dict:
  """Horizontal bars, one per token in reading order: green for the class, red against it."""
  plt = reporting.pyplot(needed_by="explain")
  n = len(a.tokens)
  fig, ax = plt.subplots(figsize=(6.0, max(2.5, 0.28 * n + 1.3)))
  colors = ["#2a9d3a" if s >= 0 else "#d1352b" for s in a.scores]
  ax.barh(range(n), a.scores, color=colors)
  ax.set_yticks(range(n), a.tokens, fontsize=8)
  ax.invert_yaxis()
  ax.axvline(0.0, color="black", linewidth=0.6)
  what = f"'{a.label}'" + (f" of word {a.word}" if a.word is not None else "")
  ax.set_title(f"{a.method} ({a.steps} steps) for {what}\n"
               f"score {a.score:.3f}, baseline {a.baseline_score:.3f}, delta {a.delta:+.4f}",
               fontsize=9)  # fmt: skip
  fig.tight_layout()
  return {name: reporting.save_figure(fig, out / name)}
