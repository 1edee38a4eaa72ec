"""Config schemas by group and option, registered beside what they configure.

A loss, model or dataset module declares its schema with `@schema(group, option)` on a dataclass next to its class;
`losslab.config.register` imports every module of the component packages, so a new component is its own file, its
YAML (`defaults: [<option>_schema]`) and its test, and nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil

COMPONENT_PACKAGES = ("losslab.losses", "losslab.models", "losslab.data")
SCHEMAS: dict[tuple[str, str], type] = {}  # (group, option) -> its dataclass


def schema(group: str, option: str):
    """Class decorator: the dataclass is the schema `<option>_schema` of config group `group`."""

    def add(node: type) -> type:
        SCHEMAS[(group, option)] = node
        return node

    return add


def component_modules(package: str) -> list[str]:
    """The dotted names of every module of a component package."""
    found = importlib.import_module(package)
    return [f"{package}.{info.name}" for info in pkgutil.iter_modules(found.__path__)]


def import_components(package: str) -> None:
    """Import every module of a component package, so that each registers what it declares."""
    for module in component_modules(package):
        importlib.import_module(module)


def discover() -> dict[tuple[str, str], type]:
    """Every schema of the component packages (importing each of their modules once)."""
    for package in COMPONENT_PACKAGES:
        import_components(package)
    return SCHEMAS


def find_component(package: str, name: str):
    """`name` from whichever module of a component package defines it: the configs' `_target_`s name classes as
    `losslab.losses.CrossEntropy`, so a new component needs no line in its package's `__init__`."""
    for module in component_modules(package):
        found = importlib.import_module(module)
        if name in vars(found):
            return vars(found)[name]
    raise AttributeError(f"module {package!r} has no attribute {name!r}")
