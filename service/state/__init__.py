"""Persistent actor state: the store interface, an embedded store, a Redis store, and the
per-call session that serves a sandbox's state operations (shared/spec/state.md)."""
