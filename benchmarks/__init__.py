"""Benchmarks: recommendation quality, trainer overhead, operator scale, range-test cost (see README.md)."""
