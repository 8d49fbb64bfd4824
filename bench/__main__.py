"""The whole offline benchmark in one command: quality, then speed, into one output folder.

    python -m bench [--quick] [--out DIR]

The backbone is the shipped checkpoint (``adapters/checkpoints/miniworld-vit.safetensors``); rebuild
it with ``python -m bench.pretrain`` (about 20 minutes on 2 cores). A full run takes about 45 minutes
for quality and 20 for speed on 2 cores; each part can be run alone as ``python -m bench.quality``
or ``python -m bench.speed``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import quality, speed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small variants (a few minutes in all)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default docs/bench; bench/runs/quick with --quick, so that a quick run "
                             "never overwrites the published results)")
    args = parser.parse_args(argv)
    out = args.out or Path("bench/runs/quick" if args.quick else "docs/bench")
    common = ["--out", str(out)] + (["--quick"] if args.quick else [])
    return quality.main(common) or speed.main(common)


if __name__ == "__main__":
    raise SystemExit(main())
