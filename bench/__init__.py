"""Benchmarks of the runtime against its floors: ``python -m bench`` (see bench/README.md)."""
