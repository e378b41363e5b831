"""One registry idiom for every pluggable component: a name -> factory map (timm/smp style).

Models, losses, optimizers, schedulers and datasets each own one `Registry`. A config selects an
entry by `name`; every other key is passed to the factory as a keyword argument, checked against
the factory's signature first so that a mistyped option is a one-line error naming the options.

A user's own component needs no edit of segbench: a config file (in a folder put on
`hydra.searchpath`) that names a `_target_` import path instead of a registered `name`:

    # my_configs/model/tiny.yaml
    name: tiny                         # a label for reports and run names
    _target_: mylab.models.TinyNet     # any importable callable
    width: 16                          # its keyword arguments

`segbench train hydra.searchpath=[file://my_configs] model=tiny` then builds `TinyNet(width=16)`
through the same code path as a built-in model. See docs/extending.md.

What a run directory's files name is another matter: a run directory is data, received from
anyone, so a `_target_` read back from one (eval, predict, export, ensemble, the Python API) is
imported only when this machine's user allowed its module (`SEGBENCH_TRUSTED_MODULES`, see
docs/guarantees.md#a-run-directory-is-data-not-code); everything else comes from registered names.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, cast

from omegaconf import OmegaConf

from segbench import SegbenchError, config_dir
from segbench.suggest import closest


class Registry:
    """`register(name)` decorates a factory; `build(spec, **context)` makes one from a config.

    `meta` keeps per-entry facts a registry's users need besides the factory (a model's size
    divisor). Entries may be lazy ("module:attribute" or "module" strings), imported on first use,
    so that listing names never imports heavy code.
    """

    def __init__(self, kind: str, group: str | None = None):
        self.kind = kind  # "model", "loss", ... for messages
        self.group = group or kind  # its config group: configs/<group>/<name>.yaml
        self._entries: dict[str, Callable | str] = {}
        self._meta: dict[str, dict] = {}
        self._defaults: dict[str, dict] = {}

    def register(self, name: str, factory: Callable | str | None = None, **meta):
        """`@registry.register("name")` or `registry.register("name", factory_or_path)`."""
        def add(fn):
            self._entries[name] = fn
            self._meta[name] = meta
            return fn

        return add if factory is None else add(factory)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def meta(self, name: str) -> dict:
        self.get(name)
        return self._meta.get(name, {})

    def get(self, name: str):
        if name not in self._entries:
            near = closest(name, self.names(), 1)
            raise SegbenchError(f"unknown {self.kind} {name!r}; "
                                + (f"did you mean {near[0]!r}? " if near else "")
                                + f"available: {', '.join(self.names())}"
                                f" (or a {self.group} config with a _target_: "
                                "see docs/extending.md)")
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = self._entries[name] = import_object(entry)
        return entry

    def resolve(self, spec: Mapping) -> tuple[str, Callable, dict]:
        """(label, factory, keyword arguments) of a config entry: `_target_` wins over `name`."""
        kwargs = dict(spec)
        target = kwargs.pop("_target_", None)
        name = kwargs.pop("name", None)
        if target:
            factory = import_object(str(target), f"{self.group}._target_")
            return str(name or target), factory, kwargs
        if name is None:
            raise SegbenchError(f"the {self.group} config names no {self.kind}: give "
                                f"{self.group}.name (one of {', '.join(self.names())}) "
                                "or a _target_")
        factory = self.get(str(name))
        return str(name), factory, {**self.defaults(str(name)), **kwargs}

    def defaults(self, name: str) -> dict:
        """The options of configs/<group>/<name>.yaml: the one place a default is written. A spec
        that names an entry without all its options (a nested loss, a call from Python) is
        completed from there."""
        if name not in self._defaults:
            path = config_dir() / self.group / f"{name}.yaml"
            # A group's option file is a mapping of options.
            found = (cast(dict, OmegaConf.to_container(OmegaConf.load(path)))
                     if path.is_file() else {})
            self._defaults[name] = {k: v for k, v in found.items() if k not in ("name", "_target_")
                                    and not (isinstance(v, str) and "${" in v)}
        return dict(self._defaults[name])

    def build(self, spec: Mapping, *, context: Mapping | None = None, **fixed) -> Any:
        """The component of a config entry. `fixed` keyword arguments always go to the factory
        (e.g. an optimizer's parameters); `context` entries go to factories that name them as a
        parameter (e.g. a loss that needs the training masks) and are dropped for the others."""
        label, factory, kwargs = self.resolve(spec)
        offered = {k: v for k, v in (context or {}).items()
                   if accepts(factory, k) and k not in kwargs}
        check_options(factory, kwargs, f"{self.kind} {label}", self.group,
                      given=(*fixed, *offered))
        try:
            return factory(**fixed, **kwargs, **offered)
        except SegbenchError:
            raise
        except (TypeError, ValueError) as err:
            raise SegbenchError(f"{self.kind} {label}: {err}") from None


TRUSTED_MODULES = "SEGBENCH_TRUSTED_MODULES"  # this machine's user's allowed import prefixes


def trusted_prefixes() -> list[str]:
    """The module prefixes this machine's user allows a run directory to name (comma, colon or
    space separated, e.g. `SEGBENCH_TRUSTED_MODULES=mylab,otherlab.models`)."""
    given = re.split(r"[,:\s]+", os.environ.get(TRUSTED_MODULES, ""))
    return [p.strip(".") for p in given if p.strip(".")]


def is_trusted(path: str) -> bool:
    return any(path == p or path.startswith(p + ".") for p in trusted_prefixes())


def import_paths(doc, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) of every `_target_` anywhere in a config tree (dicts and lists)."""
    found: list[tuple[str, str]] = []
    items = (doc.items() if isinstance(doc, Mapping)
             else enumerate(doc) if isinstance(doc, list) else ())
    for key, value in items:
        where = f"{prefix}{key}"
        if str(key) == "_target_":
            found.append((where, str(value)))
        else:
            found += import_paths(value, f"{where}.")
    return found


def check_trusted(doc, source: str) -> None:
    """Refuse (one line) a config read from `source` (a run's file) that names an import path
    this machine's user has not allowed: opening a run directory must not run its code."""
    for key, path in import_paths(doc):
        if not is_trusted(path):
            top = path.split(".")[0]
            raise SegbenchError(
                f"{source}: {key}={path} is an import path, and segbench does not import code "
                f"named by a run directory (it could run anything); if you trust it, allow its "
                f"package on this machine: export {TRUSTED_MODULES}={top} "
                "(see docs/guarantees.md)")


def import_object(path: str, key: str = "_target_"):
    """`package.module.attribute` (or a module path) -> the object, imported on demand."""
    try:
        return importlib.import_module(path)  # a module (a dataset module)
    except ModuleNotFoundError as err:
        if err.name != path:
            raise SegbenchError(f"{key}={path}: cannot import {err.name!r}; is it installed and on "
                                "the Python path?") from None
    module_name, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ModuleNotFoundError, ValueError):
        raise SegbenchError(f"{key}={path}: cannot import {module_name or path!r}; is it installed "
                            "and on the Python path?") from None
    except AttributeError:
        raise SegbenchError(f"{key}={path}: {module_name} has no {attribute!r}") from None


def accepts(factory: Callable, name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def check_options(factory: Callable, kwargs: Mapping, label: str, group: str,
                  given: tuple[str, ...] = ()) -> None:
    """A one-line error for keyword arguments the factory does not take (unless it takes **kw)
    and for required ones the config lacks (defaults live in the YAML files, not in code)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        _check_unknown(params, kwargs, label, group, given)
    missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs
               and n not in given and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        raise SegbenchError(f"{label} needs option {', '.join(missing)}; the config lacks it "
                            f"(see configs/{group}/)")


def _check_unknown(params, kwargs, label, group, given) -> None:
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        options = [n for n, p in params.items()
                   if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                   and n not in ("self", "context", *given)]
        raise SegbenchError(f"{label} has no option {', '.join(unknown)}; its options: "
                            f"{', '.join(options) or '(none)'} (see configs/{group}/)")
