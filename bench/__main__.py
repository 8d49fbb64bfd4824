"""The whole offline benchmark in one command: quality, then speed, into one output folder.

    python -m bench [--quick] [--out DIR]

The backbone is the shipped checkpoint (``adapters/checkpoints/miniworld-vit.safetensors``); rebuild
it with ``python -m bench.pretrain`` (see ``bench/backbone_card.json`` for the exact commands and
their wall time). The full quality protocol (four shifts, two train sizes, three seeds, lr-swept
baselines) takes hours on 2 shared cores; ``python -m bench.quality --help`` shows how to run a
part of it (per shift, in parallel, then ``--merge``). Each half runs alone as
``python -m bench.quality`` or ``python -m bench.speed``.
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
