"""The registry of anomaly-detection methods: each sub-folder is a method that registers itself on import, and
installed packages add theirs through the `draem.methods` entry-point group."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import pkgutil

from draem.errors import DraemError
from draem.methods.base import AnomalyModel

DEFAULT = "draem"
"""The method a command uses when none is named."""
ENTRY_POINT_GROUP = "draem.methods"
REQUIRED_PRESETS = ("full", "demo")

_REGISTRY: dict[str, type[AnomalyModel]] = {}


def register(cls: type[AnomalyModel]) -> type[AnomalyModel]:
    """Class decorator: make a method available under its `name`."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} is registered twice")
    missing = [name for name in ("paper", "headline", "Options", "paper_length", "presets", "loss_terms")
               if not hasattr(cls, name)]
    missing += [f"presets[{name!r}]" for name in REQUIRED_PRESETS if name not in getattr(cls, "presets", {})]
    if missing:
        raise ValueError(f"method {cls.name!r} does not declare {', '.join(missing)}")
    _REGISTRY[cls.name] = cls
    return cls


@functools.cache
def _discover() -> None:
    """Import the built-in methods and the installed packages' ones, once per process."""
    for module in pkgutil.iter_modules(__path__):
        if module.ispkg:
            importlib.import_module(f"{__name__}.{module.name}")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:
            raise DraemError(f"method package {entry.value} (entry point {entry.name}) fails to load: {exc}") from exc


def available() -> list[str]:
    """Names of every registered method, in alphabetical order."""
    _discover()
    return sorted(_REGISTRY)


def get(name: str) -> type[AnomalyModel]:
    """The model class of a method; a one-line error naming the known ones for an unknown name."""
    names = available()
    if name not in _REGISTRY:
        raise DraemError(f"--method {name}: unknown method; expected one of {', '.join(names)}")
    return _REGISTRY[name]


def preset_options(name: str, preset: str) -> dict:
    """The option defaults of one of a method's named presets; a one-line error naming the known ones."""
    presets = get(name).presets
    if preset not in presets:
        raise DraemError(f"--preset {preset}: method {name} has the presets {', '.join(presets)}")
    return dict(presets[preset])


__all__ = ["DEFAULT", "AnomalyModel", "available", "get", "preset_options", "register"]
