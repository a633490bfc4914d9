"""Sandboxes that run actor scripts: the backend contract, the backends and warm pools."""
