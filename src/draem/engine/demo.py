"""`draem demo`: built-in data, a compact model per surface, evaluation and reports in minutes."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from draem import methods
from draem.data.demo import DEMO_DEFAULT_KINDS, generate_demo_dataset
from draem.engine.config import TrainConfig
from draem.engine.evaluate import EvaluationConfig, evaluate, format_table
from draem.engine.run import RunFiles
from draem.engine.train import train

log = logging.getLogger("draem")


@dataclass
class DemoConfig:
    """The demo: small images, the method's `demo` preset, 400 steps per surface."""

    out: str = "draem-demo"
    kinds: Sequence[str] = DEMO_DEFAULT_KINDS
    method: str = methods.DEFAULT
    options: dict[str, Any] = field(default_factory=dict)
    """Options over the method's demo preset."""
    seed: int = 0
    image_size: int = 96
    steps: int = 400
    batch_size: int = 8
    score_window: int = 5
    train_per_kind: int = 80
    test_good_per_kind: int = 20
    test_defects_per_type: int = 10
    device: str = "auto"
    precision: str = "auto"

    def run_folder(self, kind: str) -> Path:
        """Where the run of one surface kind goes (the default method's directly under runs/, as before)."""
        runs = Path(self.out) / "runs"
        return runs / kind if self.method == methods.DEFAULT else runs / self.method / kind

    def train_config(self, data: Path, kind: str) -> TrainConfig:
        """The training run of one surface kind, resumed where it stopped."""
        return TrainConfig(data=str(data), category=kind, out=str(self.run_folder(kind)), method=self.method,
                           preset="demo", options=self.options, max_steps=self.steps, batch_size=self.batch_size,
                           image_size=self.image_size, score_window=self.score_window, recipe="paper",
                           seed=self.seed, device=self.device, precision=self.precision, resume=True)


def run_demo(config: DemoConfig) -> list[Path]:
    """Generate the demo data, then train (or resume), test and report each surface kind; the report paths.

    Runs made on other data (another seed, size or generator version) are trained again.
    """
    started = time.perf_counter()
    out = Path(config.out)
    description = out / "data" / "README.txt"
    before = description.read_text(encoding="utf-8") if description.is_file() else None
    data = generate_demo_dataset(out / "data", seed=config.seed, kinds=config.kinds, image_size=config.image_size,
                                 train_per_kind=config.train_per_kind,
                                 test_good_per_kind=config.test_good_per_kind,
                                 test_defects_per_type=config.test_defects_per_type)
    data_changed = description.read_text(encoding="utf-8") != before
    reports = []
    for kind in config.kinds:
        run = config.run_folder(kind)
        if data_changed and run.exists():
            log.info("demo: the data changed; training %s again", kind)
            shutil.rmtree(run)
        if not RunFiles(run).model.exists():
            log.info("demo: training on %s", kind)
            train(config.train_config(data, kind))
        metrics = evaluate(EvaluationConfig(run=str(run), data=str(data), category=kind,
                                            device=config.device, precision=config.precision))
        print(f"\n{kind}\n{format_table(metrics)}")
        reports.append(RunFiles(run).report)
    log.info("demo finished in %.0f s", time.perf_counter() - started)
    return reports
