"""Model families. Each family module gives a config class, presets and a Linen module whose
weight matrices are `flaxlm.nn.projection.Projection`s.

`FAMILIES[name]` gives a `Family`; the trainer, tasks, sharding, checkpoints and export only
ever see that record, so adding a family is a module and one `registry.register(Family(...))`
call, in flaxlm or outside it (tests/toy_plugins.py does it from a test) — no `if name ==`.
"""

from flaxlm.models.registry import FAMILIES, Family, build_model, family_of, register

__all__ = ["FAMILIES", "Family", "build_model", "family_of", "register"]
