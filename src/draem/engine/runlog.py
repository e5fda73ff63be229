"""What a run shows and keeps while it trains: losses.csv, TensorBoard, the progress bar, and a polite stop."""

from __future__ import annotations

import csv
import signal
import time

from tqdm import tqdm

from draem.engine.run import RunFiles
from draem.files import write_text


class StopRequest:
    """Turns the first Ctrl-C or SIGTERM into a request honoured after the current step."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> StopRequest:
        self._previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in self._previous:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class LossLog:
    """losses.csv (trimmed to the resumed step), TensorBoard when installed, and the progress bar."""

    def __init__(self, files: RunFiles, terms: tuple[str, ...], step: int, total_steps: int,
                 enabled: bool = True) -> None:
        self.enabled, self.terms = enabled, terms
        if not enabled:
            return
        columns = ["step", "epoch", "stage", "lr", *terms, "images_per_s"]
        rows: list[list[str]] = []
        if step and files.losses.exists():
            with files.losses.open(newline="") as stream:  # by column name: a newer version may log more terms
                rows = [[r.get(c) or "" for c in columns] for r in csv.DictReader(stream)
                        if r.get("step") and int(r["step"]) <= step]
        write_text(files.losses, "\n".join(",".join(r) for r in [columns, *rows]) + "\n")
        self.stream = files.losses.open("a", newline="", buffering=1)
        self.writer = csv.writer(self.stream)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.board: SummaryWriter | None = SummaryWriter(str(files.root / "tensorboard"))
        except ImportError:
            self.board = None
        self.progress = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
        self.last = time.perf_counter()

    def record(self, step: int, epoch: int, stage: str, lr: float, losses: dict[str, float], images: int) -> None:
        """Log one finished step; images/s counts every process's images."""
        if not self.enabled:
            return
        now = time.perf_counter()
        rate, self.last = images / (now - self.last), now
        cells = [f"{losses[k]:.6f}" if k in losses else "" for k in self.terms]
        self.writer.writerow([step, epoch, stage, f"{lr:.6g}", *cells, f"{rate:.3f}"])
        if self.board is not None:
            for name, value in losses.items():
                self.board.add_scalar(f"loss/{name}", value, step)
        self.progress.update(1)
        shown = {k: f"{v:.4f}" for k, v in list(losses.items())[:4]}
        self.progress.set_postfix(**shown, img_s=f"{rate:.1f}")

    def __enter__(self) -> LossLog:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.close()
            self.stream.close()
            if self.board is not None:
                self.board.close()
