"""Quality grids: one module per model family; each adds its rows to benchmarks/quality.py."""
