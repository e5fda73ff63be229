"""The `draem` command line: argument parsing only; each command calls a library function."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from draem.errors import DraemError

log = logging.getLogger("draem")


def _add_train(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train", help="train DRAEM on the defect-free images of a category")
    p.add_argument("--data", help="MVTec-layout root or category folder (not needed with --resume)")
    p.add_argument("--category", help="category folder name under --data")
    p.add_argument("--out", required=True, help="run directory to create (or continue)")
    p.add_argument("--epochs", type=int, default=700)
    p.add_argument("--max-steps", type=int, help="stop after this many steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--fit", choices=("resize", "pad"), default="resize",
                   help="squash images to a square (the paper) or pad to keep the aspect ratio")
    p.add_argument("--recon-width", type=int, default=128, help="reconstructive base width")
    p.add_argument("--seg-width", type=int, default=64, help="discriminative base width")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--anomaly-source", help="folder of texture images (e.g. DTD); built-in if absent")
    p.add_argument("--source-colour", choices=("color", "gray", "auto"), default="color",
                   help="make anomaly sources grey ('auto': when the training images are grey)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16 autocast (faster on CPUs with AMX/AVX512-BF16 and on GPUs)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")


def _run_train(args: argparse.Namespace) -> None:
    from draem.engine.train import TrainConfig, train

    if args.data is None and not args.resume:
        raise DraemError("train: --data is required (unless --resume continues a run)")
    options = {k: v for k, v in vars(args).items() if k not in ("command", "debug", "handler")}
    options["data"] = options["data"] or ""
    print(train(TrainConfig(**options)))


def _add_test(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("test", help="evaluate a trained run on a labelled test set")
    p.add_argument("--run", required=True, help="run directory (or model.pt)")
    p.add_argument("--data", required=True, help="MVTec-layout root or category folder")
    p.add_argument("--category")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--out", help="where metrics.json goes (default: the run directory)")


def _run_test(args: argparse.Namespace) -> None:
    from draem.engine.evaluate import EvaluationConfig, evaluate, format_table

    options = {k: v for k, v in vars(args).items() if k not in ("command", "debug", "handler")}
    print(format_table(evaluate(EvaluationConfig(**options))))


COMMANDS = {"train": (_add_train, _run_train), "test": (_add_test, _run_test)}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser = argparse.ArgumentParser(prog="draem", description="DRAEM surface-anomaly detection")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `draem` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="draem: %(message)s", stream=sys.stderr)
    try:
        COMMANDS[args.command][1](args)
    except DraemError as exc:
        if args.debug:
            raise
        print(f"draem: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("draem: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
