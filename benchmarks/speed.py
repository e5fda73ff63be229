"""Print DRAEM throughput on this machine: training, inference and the anomaly simulator.

    python benchmarks/speed.py                 # everything (several minutes on 2 cores)
    python benchmarks/speed.py --only sim      # one part: train, infer or sim
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch

from draem.engine.devices import autocast
from draem.losses import draem_loss
from draem.models import DraemModel
from draem.synthesis.simulator import simulate_anomalies
from draem.synthesis.sources import procedural_textures

WIDTHS = {"full": (128, 64), "narrow": (32, 16)}
MODES = {"fp32 NCHW": ("fp32", False), "fp32 channels-last": ("fp32", True),
         "bf16 channels-last": ("bf16", True)}


def rate(images_per_call: int, call: Callable[[], object], seconds: float, min_calls: int = 2) -> float:
    """Images per second over repeated calls after one warm-up call."""
    call()
    calls, started = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < seconds:
        call()
        calls += 1
    return images_per_call * calls / (time.perf_counter() - started)


def training_step(model: DraemModel, batch: int, size: int, precision: str, channels_last: bool) -> Callable[[], None]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 3, size, size).contiguous(memory_format=fmt)
    masks = (torch.rand(batch, 1, size, size) > 0.9).float()

    def step() -> None:
        with autocast(torch.device("cpu"), precision):
            reconstruction, logits = model(images)
        loss = draem_loss(reconstruction, images, logits, masks)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def inference_call(model: DraemModel, batch: int, size: int, precision: str, channels_last: bool) -> Callable[[], None]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt).eval()
    images = torch.rand(batch, 3, size, size).contiguous(memory_format=fmt)

    @torch.inference_mode()
    def call() -> None:
        with autocast(torch.device("cpu"), precision):
            model.predict(images)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("train", "infer", "sim"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0, help="minimum timing per figure")
    parser.add_argument("--networks", default="full,narrow")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{args.size}x{args.size}")
    print(f"{'what':<10}{'network':<16}{'mode':<22}{'batch':>6}{'images/s':>10}")
    for name in args.networks.split(","):
        widths = WIDTHS[name]
        label = f"{name} {widths[0]}/{widths[1]}"
        for mode, (precision, channels_last) in MODES.items():
            if args.only in (None, "train"):
                step = training_step(DraemModel(*widths), 8, args.size, precision, channels_last)
                print(f"{'train':<10}{label:<16}{mode:<22}{8:>6}{rate(8, step, args.seconds):>10.2f}",
                      flush=True)
            if args.only in (None, "infer"):
                for batch in (1, 8):
                    call = inference_call(DraemModel(*widths), batch, args.size, precision, channels_last)
                    print(f"{'infer':<10}{label:<16}{mode:<22}{batch:>6}"
                          f"{rate(batch, call, args.seconds):>10.2f}", flush=True)
    if args.only in (None, "sim"):
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(8, 3, args.size, args.size)

        def simulate() -> None:
            simulate_anomalies(images, procedural_textures(8, args.size, generator), generator)

        def simulate_given_sources() -> None:
            simulate_anomalies(images, images.flip(0), generator)

        print(f"{'simulate':<10}{'-':<16}{'texture folder':<22}{8:>6}"
              f"{rate(8, simulate_given_sources, args.seconds):>10.2f}")
        print(f"{'simulate':<10}{'-':<16}{'procedural':<22}{8:>6}{rate(8, simulate, args.seconds):>10.2f}")


if __name__ == "__main__":
    main()
