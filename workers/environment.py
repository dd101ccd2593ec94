"""What a function's pickle needs, and what this Python can provide.

The needs are read from the pickle's opcodes with pickletools, never by unpickling it
(the web server and the dispatcher must not run user code): every global a pickle refers
to names its module (GLOBAL, STACK_GLOBAL), and dill names the modules a by-value function
uses as globals through `dill._dill._import_module("<name>")`. Only top-level packages
outside the standard library count: every worker has the standard library and dill.

A worker describes itself once per connection: its Python and dill versions and the
top-level modules it can import (found on its path without importing them).
Standard library only.
"""

from __future__ import annotations

import functools
import pickletools
import pkgutil
import sys

_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_IMPORTERS = {("dill._dill", "_import_module"), ("dill.dill", "_import_module")}
ALWAYS_PRESENT = frozenset(sys.stdlib_module_names) | {"__main__", "__builtin__", "builtins", "dill"}
_IMPORTER = object()  # marks dill's module importer on the scanned stack


def needed_modules(payload: bytes) -> tuple[str, ...]:
    """Top-level modules outside the standard library that unpickling `payload` imports."""
    found: set[str] = set()
    pushed: list = []  # what each opcode left on the stack, as far as this scan cares: str, _IMPORTER or None
    memo: dict[int, object] = {}
    import_next = False  # dill's _import_module was just pushed: the next string names a module
    try:
        for op, arg, _ in pickletools.genops(payload):
            name, value = op.name, None
            if name in _STRINGS:
                value = arg.decode("latin-1") if isinstance(arg, bytes) else arg
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                value = memo.get(int(arg))
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
                continue
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = pushed[-1] if pushed else None
                continue
            elif name in ("GLOBAL", "STACK_GLOBAL", "INST"):
                if name == "STACK_GLOBAL":
                    module, qualname = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
                else:
                    module, _, qualname = str(arg).partition(" ")
                if isinstance(module, str):
                    found.add(module)
                    value = _IMPORTER if (module, qualname) in _IMPORTERS else None
            if value is _IMPORTER:
                import_next = True
            elif isinstance(value, str) and import_next:
                found.add(value)
                import_next = False
            pushed.append(value)
    except Exception:  # a stream the web already accepted but this scan cannot follow: claim nothing
        return ()
    tops = {m.split(".")[0] for m in found if m}
    return tuple(sorted(t for t in tops if t not in ALWAYS_PRESENT and t.isidentifier()))


@functools.cache
def describe() -> dict:
    """This interpreter: Python and dill versions and the top-level modules it can import."""
    try:
        import dill

        dill_version = dill.__version__
    except ImportError:
        dill_version = ""
    names = {m.name for m in pkgutil.iter_modules()} | set(sys.builtin_module_names)
    return {"python": ".".join(map(str, sys.version_info[:3])), "dill": dill_version,
            "modules": tuple(sorted(n for n in names if n not in ALWAYS_PRESENT))}


def missing(needs, modules) -> list[str]:
    have = set(modules) | ALWAYS_PRESENT
    return [m for m in needs if m not in have]


def sentence(needs_missing: list[str], where: str = "no live worker can import") -> str:
    """The failure of a task nobody can run, naming what is missing."""
    return f"needs {', '.join(needs_missing)}, which {where}"
