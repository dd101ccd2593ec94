"""By-value pickling for the client: user code travels inside the payload, libraries by name.

dill 0.4.1 pickles a function from an importable module as a reference to that module, so
a worker without the user's module fails to unpickle it; even a `__main__` function only
travels with a reference to the worker's own `__main__`, so its helpers go missing. The
`ShippingPickler` here copies every function and class of the user's own code (any module
outside the standard library and site-packages, `__main__` included) into the pickle, with
only the globals its code names, recursively. Standard-library and installed packages, and
the platform's own `workers` package, stay references. Django-free: dill only.
"""

from __future__ import annotations

import abc
import dis
import io
import pickle
import site
import sys
import sysconfig
import threading
import types
import weakref
from collections.abc import Iterable
from pathlib import Path

import dill

BY_REFERENCE = ("workers",)  # packages every worker has: their exception classes must stay the same class

GLOBAL_OPS = {"LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_NAME", "STORE_NAME", "DELETE_NAME"}
ATTRIBUTE_OPS = {"LOAD_ATTR", "LOAD_METHOD", "STORE_ATTR", "DELETE_ATTR"}
SHIPPABLE_METACLASSES = (type, abc.ABCMeta)  # dill cannot rebuild others (an Enum) by value

_REBIND_LOCK = threading.Lock()  # a shipped class's __module__ is rebound only while it is pickled


def _library_roots() -> tuple[str, ...]:
    paths = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(getattr(site, "getsitepackages", lambda: [])())
    paths.add(site.getusersitepackages() if hasattr(site, "getusersitepackages") else "")
    paths.update(p for p in sys.path if "site-packages" in p or "dist-packages" in p)
    return tuple(str(Path(p).resolve()) + "/" for p in paths if p)


class Shipper:
    """Decides which modules travel by value and pickles with that decision.

    `by_value` names packages to ship even when installed; `by_reference` names packages
    the workers are known to have. Both match a package and everything under it.
    """

    def __init__(self, by_value: Iterable[str] = (), by_reference: Iterable[str] = BY_REFERENCE):
        self.by_value = tuple(by_value)
        self.by_reference = tuple(by_reference)
        self._roots = _library_roots()
        self._decided: dict[str, bool] = {}
        self.shipped_classes = ShippedClasses()

    def ships(self, module_name: str | None) -> bool:
        """True when objects from `module_name` must travel by value."""
        if module_name is None or module_name == "__main__":
            return True
        if (known := self._decided.get(module_name)) is not None:
            return known
        decision = self._decide(module_name)
        self._decided[module_name] = decision
        return decision

    def _decide(self, name: str) -> bool:
        if _under(name, self.by_value):
            return True
        if _under(name, self.by_reference) or name in sys.builtin_module_names:
            return False
        module = sys.modules.get(name)
        if module is None:
            return True  # not importable here, so certainly not on a worker either
        path = getattr(module, "__file__", None)
        if path is None:
            return getattr(module, "__spec__", None) is None  # made at run time, not a namespace package
        return not str(Path(path).resolve()).startswith(self._roots)

    def dumps(self, obj) -> bytes:
        """dill bytes of `obj` with the user's code inside; plain data (see `is_plain`) as
        a standard pickle, which dill reads the same and which costs 1 µs instead of 20."""
        if is_plain(obj):
            return pickle.dumps(obj, protocol=PLAIN_PROTOCOL)
        buffer = io.BytesIO()
        with _REBIND_LOCK:
            ShippingPickler(buffer, self).dump(obj)
        return buffer.getvalue()

    def loads(self, data: bytes):
        """Unpickle a result; by-value classes this client shipped come back as the caller's own class."""
        return ResultUnpickler(io.BytesIO(data), self.shipped_classes).load()


PLAIN_ATOMS = frozenset((type(None), bool, int, float, complex, str, bytes))
PLAIN_CONTAINERS = frozenset((tuple, list, dict, set, frozenset))
PLAIN_MAX_ITEMS = 10_000  # past this many values, checking would cost more than dill saves
PLAIN_PROTOCOL = 4  # every Python 3.8+ worker reads it


def is_plain(obj) -> bool:
    """True for built-in data only (exact types: no subclass, no user class, no function),
    which a standard pickle writes exactly as dill would read it."""
    return _plain_left(obj, PLAIN_MAX_ITEMS) >= 0


def _plain_left(obj, budget: int) -> int:
    """`budget` less the values in `obj`, or -1 when it is not plain or too big to check."""
    kind = type(obj)
    if kind in PLAIN_ATOMS:
        return budget - 1
    if kind not in PLAIN_CONTAINERS or budget < len(obj):
        return -1
    budget -= 1
    for item in (obj if kind is not dict else _flat_items(obj)):
        budget = _plain_left(item, budget) if type(item) not in PLAIN_ATOMS else budget - 1
        if budget < 0:
            return -1
    return budget


def _flat_items(mapping: dict):
    for key, value in mapping.items():
        yield key
        yield value


def _under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


class ShippingPickler(dill.Pickler):
    """A dill pickler that replaces user functions by by-value copies as it meets them."""

    def __init__(self, file, shipper: Shipper):
        super().__init__(file, recurse=False)
        self.shipper = shipper
        self.copies: dict[int, tuple[object, object]] = {}  # id(original) -> (original, copy)

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, types.FunctionType) and self.shipper.ships(obj.__module__):
            obj = self._copy_function(obj)
        elif type(obj) in SHIPPABLE_METACLASSES and id(obj) not in self.memo and self.shipper.ships(obj.__module__):
            return self._save_class(obj, save_persistent_id)
        return super().save(obj, save_persistent_id)

    def _copy_function(self, fn: types.FunctionType) -> types.FunctionType:
        """The same code with `__module__ = "__main__"` (dill's by-value rule) and only the
        globals its code names; the pickler reaches those values and copies them in turn."""
        if (known := self.copies.get(id(fn))) is not None:
            return known[1]
        names, attributes = code_names(fn.__code__)
        scope = {"__name__": "__main__"}
        copy = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, self._closure(fn, attributes))
        copy.__kwdefaults__, copy.__qualname__, copy.__doc__ = fn.__kwdefaults__, fn.__qualname__, fn.__doc__
        copy.__dict__.update(fn.__dict__)
        copy.__module__ = "__main__"
        self.copies[id(fn)] = (fn, copy)
        for name in names:
            if name in fn.__globals__ and not name.startswith("__"):
                scope[name] = self._global(fn.__globals__[name], attributes, {})
        return copy

    def _closure(self, fn: types.FunctionType, attributes: set[str]) -> tuple | None:
        """The closure, with a user module held in a cell replaced like a global one (other
        cells are kept as they are: sibling closures share them)."""
        if not fn.__closure__:
            return fn.__closure__
        cells = []
        for cell in fn.__closure__:
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                cells.append(cell)
                continue
            stand_in = self._global(value, attributes, {})
            cells.append(cell if stand_in is value else types.CellType(stand_in))
        return tuple(cells)

    def _global(self, value, attributes: set[str], seen: dict[int, object]):
        """A module of the user's own stands in as a namespace of just the attributes the code
        reads, so `import helpers; helpers.f()` works where `helpers` is not installed."""
        if not isinstance(value, types.ModuleType) or not self.shipper.ships(value.__name__):
            return value
        if id(value) in seen:
            return seen[id(value)]
        stand_in = seen[id(value)] = types.SimpleNamespace(__name__=value.__name__)
        for name in attributes:
            if hasattr(value, name) and not name.startswith("__"):
                setattr(stand_in, name, self._global(getattr(value, name), attributes, seen))
        return stand_in

    def _save_class(self, cls: type, save_persistent_id: bool):
        """dill pickles a class by value when its module is `__main__`: rebind it for the
        duration of this call only (under `_REBIND_LOCK`), then put the name back."""
        self.shipper.shipped_classes.add(cls)
        module = cls.__module__
        try:
            cls.__module__ = "__main__"
        except (TypeError, AttributeError):
            return super().save(cls, save_persistent_id)
        try:
            return super().save(cls, save_persistent_id)
        finally:
            cls.__module__ = module


def code_names(code: types.CodeType) -> tuple[set[str], set[str]]:
    """(globals, attribute names) that the code and the code nested in it use: the globals a
    by-value copy must carry, and what to take from a module it reads attributes of."""
    names, attributes = set(), set()
    for instruction in dis.get_instructions(code):
        if instruction.opname in GLOBAL_OPS:
            names.add(instruction.argval)
        elif instruction.opname in ATTRIBUTE_OPS:
            attributes.add(instruction.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            inner_names, inner_attributes = code_names(const)
            names |= inner_names
            attributes |= inner_attributes
    return names, attributes


class ShippedClasses:
    """Classes this process shipped by value, by name, so a result or exception of that class
    maps back to the caller's class (and `except MyError:` still matches). A name shipped
    for two different classes maps back to neither."""

    def __init__(self):
        self._classes: weakref.WeakValueDictionary[str, type] = weakref.WeakValueDictionary()
        self._ambiguous: set[str] = set()

    def add(self, cls: type) -> None:
        name = cls.__name__
        known = self._classes.get(name)
        if known is not None and known is not cls:
            self._ambiguous.add(name)
        self._classes[name] = cls

    def find(self, name: str) -> type | None:
        return None if name in self._ambiguous else self._classes.get(name)


class ResultUnpickler(dill.Unpickler):
    """dill's unpickler, except that a by-value `__main__` class that this client shipped is
    replaced by the original class instead of a look-alike."""

    def __init__(self, file, classes: ShippedClasses):
        super().__init__(file)
        self.classes = classes

    def find_class(self, module, name):
        found = super().find_class(module, name)
        if (module, name) == ("dill._dill", "_create_type"):
            return self._create_type
        return found

    def _create_type(self, metaclass, *args):
        if metaclass is type and len(args) == 3 and isinstance(args[2], dict) \
                and args[2].get("__module__") == "__main__":
            known = self.classes.find(args[0])
            if known is not None:
                return known
        return metaclass(*args)
