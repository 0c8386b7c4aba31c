#!/usr/bin/env python
"""Benchmark suite (the same as the ``nst-bench`` command; see nst/bench.py for what it measures).

    python scripts/bench.py --sizes 256 --backbone vgg16 --steps 10 --compare-torch --out bench.jsonl
    python scripts/bench.py --sizes 256 --steps 10 --grid 16          # batched 16-job grid vs sequential
    python scripts/bench.py --sizes 128 --max-size 20                 # largest size in 20 GiB, remat off/on

Writes JSON lines to --out (appending) and prints a markdown table. PyTorch is optional
(`pip install torch==2.13.0`).
"""

import sys

from nst.bench import main

if __name__ == "__main__":
    sys.exit(main())
