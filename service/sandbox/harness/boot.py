"""Runs the Python harness from bytecode the server compiled once.

Mounted as /harness/harness.py (the harness's source and .pyc in /harness/lib) by the
process backend:
    python3 -I -B -u /harness/harness.py IN_FD OUT_FD SCRIPT ENTRYPOINT [flags]...
Python compiles a script at every start but reads a module's bytecode from its
__pycache__ (when its magic number and source stamp match this interpreter; else it
compiles the source). The code runs here, as __main__, exactly as the harness script would.
"""

import sys

try:  # the import system's own finder: already loaded, unlike importlib.machinery
    from _frozen_importlib_external import PathFinder
except ImportError:  # not CPython
    from importlib.machinery import PathFinder

_spec = PathFinder.find_spec("actor_harness", ["/harness/lib"])
if _spec is None or _spec.loader is None:
    sys.exit("harness: /harness/lib/actor_harness.py is missing")
_code = _spec.loader.get_code("actor_harness")  # type: ignore[attr-defined]
del PathFinder, _spec
exec(_code)  # defines the harness in this module and runs its main()
