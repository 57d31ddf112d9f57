"""Run every benchmark, or the one named: ``python -m benchmarks [name [args...]]``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if args and args[0] in ("-h", "--help"):
        print(f"usage: python -m benchmarks [{'|'.join(names)} [args...]]")
        return 0
    if args:
        name = args[0].removeprefix("bench_")
        if name not in names:
            print(f"unknown benchmark {args[0]!r}; available: {', '.join(names)}", file=sys.stderr)
            return 2
        importlib.import_module(f"benchmarks.bench_{name}").main(args[1:])
        return 0
    for name in names:
        print(f"\n### {name}")
        importlib.import_module(f"benchmarks.bench_{name}").main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
