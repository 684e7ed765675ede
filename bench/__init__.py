"""Benchmarks: python -m bench runs them all (see BENCHMARKS.md)."""
