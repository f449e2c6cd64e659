"""Benchmarks users can run: each prints a table and writes JSON."""
