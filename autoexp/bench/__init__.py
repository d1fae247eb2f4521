"""`autoexp-bench`: autoexp timed against a plain PyTorch loop, per-sample loading and sklearn.

Run `autoexp-bench --help`; docs/benchmarks.md shows the latest run and what it measures.
"""
