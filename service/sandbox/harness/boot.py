"""Starts the Python harness from its module, whose bytecode the server compiled once.

Mounted as /harness/harness.py (with the module in /harness/lib) by the process backend:
    python3 -I -B -u /harness/harness.py IN_FD OUT_FD SCRIPT ENTRYPOINT [flags]...
A script is compiled at every start, a module's bytecode is read from its __pycache__
(when its magic number and source stamp match this interpreter; else it is compiled here).
"""

import sys

sys.path.insert(0, "/harness/lib")
import actor_harness  # found through the line above

del sys.path[0]
sys.exit(actor_harness.main(sys.argv))
