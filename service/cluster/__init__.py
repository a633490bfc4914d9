"""Cluster mode: fronts and workers sharing calls through Redis Streams (docs/cluster.md)."""
