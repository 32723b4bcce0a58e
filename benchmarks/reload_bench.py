"""What watching and reloading the configuration cost: one watch poll (stat of every
configuration file) in µs, and one reload's load-check-compile of the configuration in ms.

Run: .venv/bin/python benchmarks/reload_bench.py [--config routes.yaml]
Each figure is the best of several timing rounds, so it shows the code, not the noise. The
example's channels read ${WEBHOOK_SECRET}; a synthetic one is set when it is missing.
"""

from __future__ import annotations

import argparse
import base64
import os
import timeit
from pathlib import Path

from engine.runtime import config_files
from engine.runtime.reload import prepare

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "routes.yaml")
    args = parser.parse_args()
    routes = args.config.resolve()
    os.environ.setdefault("WEBHOOK_SECRET", "whsec_" + base64.b64encode(os.urandom(32)).decode())
    count = len(config_files.files(routes))
    number = 2000
    poll = min(timeit.repeat(lambda: config_files.stats(routes), number=number, repeat=7))
    print(f"watch poll ({count} files stat'ed): {poll / number * 1e6:.1f} µs")
    prepare(routes)  # imports and schema compilation happen once per process
    load = min(timeit.repeat(lambda: prepare(routes), number=5, repeat=5)) / 5
    print(f"reload load + check + compile: {load * 1e3:.1f} ms (off the event loop)")


if __name__ == "__main__":
    main()
