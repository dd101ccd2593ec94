"""The dispatcher modes by name; imported lazily so each mode loads only what it needs."""

import importlib

MODES = {"local": "dispatch.local.LocalDispatcher", "pull": "dispatch.pull.PullDispatcher",
         "push": "dispatch.push.PushDispatcher"}


def dispatcher_class(mode: str):
    module, _, name = MODES[mode].rpartition(".")
    return getattr(importlib.import_module(module), name)
