"""Benchmarks of compiled steps."""
