"""Benchmarks: each prints its figure as a ratio against a limit measured in the same run."""
