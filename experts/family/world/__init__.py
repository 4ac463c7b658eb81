"""Task generators of the world, one module per objective, each with ``generate`` and ``score``."""

from types import ModuleType

from experts.family.world import code, math, safety

GENERATORS: dict[str, ModuleType] = {"math": math, "safety": safety, "code": code}
