"""The registry of anomaly-detection methods: each sub-folder is a method that registers itself on import."""

from __future__ import annotations

import importlib
import pkgutil

from draem.errors import DraemError
from draem.methods.base import AnomalyModel

_REGISTRY: dict[str, type[AnomalyModel]] = {}


def register(cls: type[AnomalyModel]) -> type[AnomalyModel]:
    """Class decorator: make a method available under its `name`."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.ispkg:
            importlib.import_module(f"{__name__}.{module.name}")


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


__all__ = ["AnomalyModel", "available", "get", "register"]
