"""Benchmarks: throughput, data loading and model quality; results are committed under benchmarks/results/."""
