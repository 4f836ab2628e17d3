"""Self-contained HTML pages: an interactive attention head view and coloured-text token
attributions. Data, style and script are inline: the pages open offline (TPU VMs, clusters)
and load nothing from another host.

The head view follows bertviz's (queries on the left, keys on the right, a line per pair as
strong as its probability; pick the kind, layer and head, hover a token to see its lines).
bertviz itself is not used: its pages load require.js and d3 from a CDN.
"""

from __future__ import annotations

import html
import json

_HEAD_VIEW = """<!doctype html>
<html><head><meta charset="utf-8"><title>attention: __TITLE__</title>
<style>
body { font-family: sans-serif; margin: 16px; }
select { margin-right: 12px; }
text { font-size: 13px; cursor: default; }
</style></head>
<body>
<h3>__TITLE__</h3>
<p>kind <select id="kind"></select> layer <select id="layer"></select>
head <select id="head"></select> <small>(hover a token to show only its lines)</small></p>
<svg id="view" width="560"></svg>
<script>
const DATA = __DATA__;
const $ = id => document.getElementById(id);
function options(sel, values) {
  sel.innerHTML = values.map(v => `<option value="${v}">${v}</option>`).join("");
  sel.value = String(values[0]);
}
function draw(focus) {
  const d = DATA[$("kind").value], layer = +$("layer").value, head = $("head").value;
  const heads = d.maps[layer];
  const m = head === "mean" ? heads[0].map((row, i) => row.map((_, j) =>
      heads.reduce((s, h) => s + h[i][j], 0) / heads.length)) : heads[+head];
  const rowH = 20, svg = $("view"), n = Math.max(d.rows.length, d.columns.length);
  svg.setAttribute("height", n * rowH + 20);
  let out = "";
  m.forEach((row, i) => row.forEach((p, j) => {
    if (p < 0.01 || (focus !== null && focus !== i)) return;
    out += `<line x1="150" y1="${i * rowH + 15}" x2="410" y2="${j * rowH + 15}"
      stroke="#1f77b4" stroke-opacity="${Math.min(1, p)}" stroke-width="2"/>`;
  }));
  const esc = s => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
  d.rows.forEach((t, i) => { out += `<text x="140" y="${i * rowH + 19}" text-anchor="end"
      data-row="${i}">${esc(t)}</text>`; });
  d.columns.forEach((t, j) => { out += `<text x="420" y="${j * rowH + 19}">${esc(t)}</text>`; });
  svg.innerHTML = out;
  svg.querySelectorAll("text[data-row]").forEach(el => {
    el.onmouseenter = () => draw(+el.dataset.row);
    el.onmouseleave = () => draw(null);
  });
}
function pickKind() {
  const d = DATA[$("kind").value];
  options($("layer"), d.maps.map((_, i) => i));
  options($("head"), ["mean", ...d.maps[0].map((_, i) => i)]);
  draw(null);
}
options($("kind"), Object.keys(DATA));
$("kind").onchange = pickKind;
$("layer").onchange = () => draw(null);
$("head").onchange = () => draw(null);
pickKind();
</script></body></html>
"""


def _script_json(value) -> str:
  """JSON safe inside a <script> element."""
  return json.dumps(value).replace("</", "<\\/")


def head_view(maps, title: str) -> str:
  """The head view page of an `AttentionMaps` (probabilities rounded to 3 decimals)."""
  data = {
    kind: {
      "rows": maps.rows[kind],
      "columns": maps.columns[kind],
      "maps": m.round(3).tolist(),
    }
    for kind, m in maps.maps.items()
  }
  page = _HEAD_VIEW.replace("__DATA__", _script_json(data))
  return page.replace("__TITLE__", html.escape(title))


def attribution_page(a, title: str) -> str:
  """The text with each token's background as strong as its attribution (green for the
  class, red against it), its value on hover."""
  top = float(abs(a.scores).max()) or 1.0
  spans = []
  for token, s in zip(a.tokens, a.scores, strict=True):
    rgb = "42,157,58" if s >= 0 else "209,53,43"
    alpha = min(abs(float(s)) / top, 1.0)
    spans.append(
      f'<span title="{float(s):+.4f}" style="background: rgba({rgb},{alpha:.3f}); '
      f'padding: 2px 3px; margin: 1px; border-radius: 3px">{html.escape(token)}</span>'
    )
  what = html.escape(f"'{a.label}'" + (f" of word {a.word}" if a.word is not None else ""))
  return (
    '<!doctype html>\n<html><head><meta charset="utf-8">'
    f"<title>attribution: {html.escape(title)}</title></head>\n"
    '<body style="font-family: sans-serif; margin: 16px">\n'
    f"<h3>{html.escape(title)}</h3>\n"
    f"<p>{html.escape(a.method)} ({a.steps} steps) for {what}: score {a.score:.4f}, baseline "
    f"{a.baseline_score:.4f}, sum of attributions {float(a.scores.sum()):.4f} "
    f"(delta {a.delta:+.5f})</p>\n"
    f'<p style="line-height: 2.2; font-size: 18px">{"".join(spans)}</p>\n'
    "</body></html>\n"
  )
