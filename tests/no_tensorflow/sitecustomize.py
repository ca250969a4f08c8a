"""On a child interpreter's PYTHONPATH, makes it behave as if tensorflow were not installed (the
core install): `tests/test_packaging.py` and `tests/test_notebooks.py` run dustjax in such a one.

Every import finder is wrapped so that it finds none of the blocked packages: ``import
tensorflow`` raises ModuleNotFoundError and ``importlib.util.find_spec("tensorflow")`` is None,
as on a machine without them (libraries such as etils probe with find_spec)."""

import sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "keras", "tf_keras")


class _Hiding:
    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return self._finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self._finder, name)


sys.meta_path[:] = [_Hiding(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
