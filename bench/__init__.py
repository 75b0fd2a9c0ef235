"""Benchmarks: each writes a JSON result (with machine, versions and seed) and a PNG plot."""
