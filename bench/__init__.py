"""Benchmarks, each figure next to a peer measured in the same invocation: `python -m bench`."""
