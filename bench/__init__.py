"""Benchmarks of imgjobs, each a runnable module: ``python -m bench.<topic> --help``."""
