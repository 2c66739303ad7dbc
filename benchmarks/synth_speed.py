"""SynthDrive rendering speed on one core (target: >= 200 images/s at 128x256).

Prints images/s for rendering alone, rendering + PNG encoding, and the full generator writing a
committed dataset to a local temp dir; the ratio is against encoding a blank image of the same
size (a floor measured in the same run). Not a test: nothing is asserted.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/synth_speed.py [--sequences 40 --frames 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from activedet.data.synth import SynthConfig, encode_png, generate_synthdrive, render_sequence


def _rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=40)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--size", default="128x256")
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    cfg = SynthConfig(sequences=args.sequences, frames=args.frames, height=h, width=w)
    n = cfg.sequences * cfg.frames

    t0 = time.perf_counter()
    frames = [f for s in range(cfg.sequences) for f in render_sequence(cfg, s)]
    render = _rate(n, time.perf_counter() - t0)

    t0 = time.perf_counter()
    for f in frames:
        encode_png(f.image, cfg.png_compress_level)
    encode = _rate(n, time.perf_counter() - t0)

    blank = np.zeros((h, w, 3), np.uint8)
    t0 = time.perf_counter()
    for _ in range(n):
        encode_png(blank, cfg.png_compress_level)
    floor = _rate(n, time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate_synthdrive(f"{tmp}/ds", cfg)
        full = _rate(n, time.perf_counter() - t0)

    print(f"SynthDrive {h}x{w}, {n} images ({cfg.sequences} sequences x {cfg.frames} frames)")
    print(f"  render only            {render:8.1f} images/s")
    print(f"  PNG encode only        {encode:8.1f} images/s")
    print(f"  generate (render+write){full:8.1f} images/s   target >= 200")
    print(f"  baseline: blank PNG    {floor:8.1f} images/s   (generate/baseline = {full / floor:.2f})")


if __name__ == "__main__":
    main()
