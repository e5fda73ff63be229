"""Peak memory and time of the pixel metrics over a large test set (default: 2,000 images of 256x256).

    python benchmarks/metrics_memory.py [--images 2000]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from draem.metrics import PixelScores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    tracemalloc.start()
    pixels = PixelScores()
    started = time.perf_counter()
    for index in range(args.images):
        mask = np.zeros((args.size, args.size), dtype=bool)
        group = "good" if index % 3 == 0 else ("crack", "hole")[index % 2]
        if group != "good":
            y, x = rng.integers(0, args.size - 40, 2)
            mask[y:y + rng.integers(4, 40), x:x + rng.integers(4, 40)] = True
        anomaly_map = rng.random((args.size, args.size), dtype=np.float32) * 0.6 + 0.4 * mask
        pixels.add(anomaly_map, mask, group)
    _, after_adding = tracemalloc.get_traced_memory()
    added = time.perf_counter() - started
    overall = pixels.compute()
    per_type = {t: pixels.compute(["good", t]) for t in ("crack", "hole")}
    _, peak = tracemalloc.get_traced_memory()
    pixel_count = args.images * args.size * args.size
    print(f"{args.images} maps of {args.size}x{args.size} = {pixel_count / 1e6:.0f} M pixel scores "
          f"({pixel_count * 4 / 2**30:.2f} GiB as float32)")
    print(f"peak traced memory while adding: {after_adding / 2**30:.2f} GiB; "
          f"peak over adding and all compute() calls: {peak / 2**30:.2f} GiB")
    print(f"adding: {added:.1f} s; metrics overall and per type: {time.perf_counter() - started - added:.1f} s")
    print("overall", {k: round(v, 4) for k, v in overall.items()})
    print("per type", {t: {k: round(v, 4) for k, v in m.items()} for t, m in per_type.items()})


if __name__ == "__main__":
    main()
