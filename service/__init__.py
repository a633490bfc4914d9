"""Sandboxed actor runtime: a WebSocket JSON-RPC 2.0 server for Python and JavaScript actors."""

__version__ = "0.1.0"
