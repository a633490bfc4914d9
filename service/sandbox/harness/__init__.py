"""In-sandbox harnesses: ``harness.py`` (system python3, stdlib only) and ``harness.js`` (node).

They are data files for the sandbox, never imported by the server. Each one loads an actor
script, then runs calls in a loop, speaking the line protocol of ``service.sandbox.base``.
"""
