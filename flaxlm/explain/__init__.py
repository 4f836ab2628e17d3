"""Looking into a model: attention maps and token attributions (`python -m flaxlm.explain`).

import flaxlm.explain as explain
subject = explain.load("/tmp/sst2_minilm")          # any workdir, or 'hf:<folder>'
maps = explain.attention_maps(subject, "a gripping, funny film")
maps.maps["encoder"]                                 # (layers, heads, T, S)
a = explain.attribute(subject, "a gripping, funny film")   # integrated gradients
a.tokens, a.scores, a.delta
"""

from flaxlm.explain.attention import AttentionMaps, attention_maps
from flaxlm.explain.attribution import Attribution, attribute
from flaxlm.explain.subject import Subject, load

__all__ = ["AttentionMaps", "Attribution", "Subject", "attention_maps", "attribute", "load"]
