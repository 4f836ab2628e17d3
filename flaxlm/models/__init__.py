"""Model families. Each family module registers a config class, presets and a Linen module.

`FAMILIES[name]` gives a `Family`; the trainer, sharding and checkpoint code only ever see
that record, so adding a family is adding a module and one registry line — no `if name ==`.
"""

from flaxlm.models.registry import FAMILIES, Family, build_model, family_of

__all__ = ["FAMILIES", "Family", "build_model", "family_of"]
