"""`draem demo`: built-in data, a compact model per surface, evaluation and reports in minutes."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from draem.data.demo import DEMO_DEFAULT_KINDS, generate_demo_dataset
from draem.engine.evaluate import EvaluationConfig, evaluate, format_table
from draem.engine.run import RunFiles
from draem.engine.train import TrainConfig, train

log = logging.getLogger("draem")


@dataclass
class DemoConfig:
    """The compact configuration of the demo: small images, narrow networks, 400 steps per surface."""

    out: str = "draem-demo"
    kinds: Sequence[str] = DEMO_DEFAULT_KINDS
    seed: int = 0
    image_size: int = 96
    recon_width: int = 16
    seg_width: int = 16
    steps: int = 400
    batch_size: int = 8
    lr: float = 1e-3
    score_window: int = 5
    train_per_kind: int = 80
    test_good_per_kind: int = 20
    test_defects_per_type: int = 10
    device: str = "auto"
    precision: str = "auto"


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
        run = out / "runs" / kind
        if data_changed and run.exists():
            log.info("demo: the data changed; training %s again", kind)
            shutil.rmtree(run)
        if not RunFiles(run).model.exists():
            log.info("demo: training on %s", kind)
            train(TrainConfig(data=str(data), category=kind, out=str(run), max_steps=config.steps,
                              batch_size=config.batch_size, image_size=config.image_size,
                              options={"recon_width": config.recon_width, "seg_width": config.seg_width,
                                       "lr": config.lr},
                              score_window=config.score_window, recipe="paper", seed=config.seed,
                              device=config.device,
                              precision=config.precision, resume=True))
        metrics = evaluate(EvaluationConfig(run=str(run), data=str(data), category=kind,
                                            device=config.device, precision=config.precision))
        print(f"\n{kind}\n{format_table(metrics)}")
        reports.append(RunFiles(run).report)
    log.info("demo finished in %.0f s", time.perf_counter() - started)
    return reports
