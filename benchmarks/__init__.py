"""Benchmarks: each ``python -m benchmarks.<name>`` prints its figures and, last, its ratio to a raw baseline."""
