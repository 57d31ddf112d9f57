"""Benchmarks: measurements side by side, printed as ratios (``make bench``).

Each ``bench_<name>.py`` module has ``main(argv: list[str] | None = None)``;
``python -m benchmarks`` runs them all, ``python -m benchmarks <name> [args...]`` one.
Helpers to time a child process and read its peak memory are in :mod:`benchmarks._harness`.
"""
