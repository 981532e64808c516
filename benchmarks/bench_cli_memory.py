"""Peak memory of two command-line runs that used to grow without bound:

- ``zfcore occlusion PHOTO --model vgg16 --weights random`` with the default square and stride (3/14 and
  1/14 of the image side: 144 positions at 224x224), on a generated 640x480 JPEG;
- ``zfcore classify --test-index 0 ... 2999`` (3,000 images of the shipped test set).

Each runs as a fresh process; its peak resident set (``ru_maxrss`` of the waited child, which starts
from this small process) and wall time are printed. The target: VGG16 occlusion with default settings
under 2 GB.

    python benchmarks/bench_cli_memory.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def run(argv: list[str]) -> tuple[float, float, int]:
    """(peak RSS in MB, wall seconds, exit status) of ``python -m zfcore ARGV`` as a child process."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-m", "zfcore", *argv])
    _, status, usage = os.wait4(pid, 0)
    return usage.ru_maxrss / 1024, time.perf_counter() - t0, os.waitstatus_to_exitcode(status)


def main():
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo.jpg"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(photo, quality=90)
        cases = [("VGG16 occlusion, defaults (random weights)",
                  ["occlusion", str(photo), "--model", "vgg16", "--weights", "random", "--quiet",
                   "--out", f"{tmp}/occ"], 2000),
                 ("classify, 3,000 test images",
                  ["classify", "--test-index", *map(str, range(3000)), "--quiet", "--out", f"{tmp}/cls"], None)]
        for name, argv, target in cases:
            mb, s, code = run(argv)
            goal = "" if target is None else f"; target < {target} MB: {'met' if mb < target else 'MISSED'}"
            print(f"{name}: peak RSS {mb:.0f} MB, {s:.0f} s, exit {code}{goal}", flush=True)


if __name__ == "__main__":
    main()
