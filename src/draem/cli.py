"""The `draem` command line: argument parsing only; each command calls a library function."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from draem import methods
from draem.data.catalog import ALL
from draem.data.demo import DEMO_DEFAULT_KINDS, DEMO_KINDS
from draem.data.images import FIT_MODES, RESIZE_MODES
from draem.engine.config import SOURCE_COLOURS
from draem.engine.devices import PRECISIONS
from draem.engine.inference import BACKENDS
from draem.engine.recipe import RECIPES
from draem.errors import DraemError
from draem.serve.commands import add_reviews, add_serve, run_reviews, run_serve

log = logging.getLogger("draem")
BACKEND_HELP = ("onnxruntime runs the run's model.onnx (exported on first use); onnxruntime-int8 its int8 "
                "model.int8.onnx (quantised on first use, calibrated on the run's training images); openvino runs "
                "model.onnx on OpenVINO, in bf16 where the CPU computes it natively (--precision fp32: exact)")
RECIPE_HELP = ("paper: each method's own schedule; budget (the default with --max-steps or --time-budget): warm-up, "
               "a raised peak rate and a decay over the last fifth, and a score window chosen on simulated defects")


class _Help(argparse.HelpFormatter):
    """Help text with each option's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _add_method_options(parser: argparse.ArgumentParser, name: str) -> None:
    """One flag per field of the method's options; unset flags stay None so the method's defaults apply."""
    method = methods.get(name)
    group = parser.add_argument_group(f"options of method {name} ({method.paper})")
    hints = typing.get_type_hints(method.Options)
    for item in dataclasses.fields(method.Options):
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        text = f"{item.metadata['help']} (default: {shown})".replace("%", "%%")
        flag, kind = "--" + item.name.replace("_", "-"), hints[item.name]
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind == tuple[float, ...]:
            group.add_argument(flag, type=float, nargs="+", help=text)
        else:
            group.add_argument(flag, type=kind, choices=item.metadata.get("choices"), help=text)


def method_options(args: argparse.Namespace, name: str) -> dict:
    """The method options given on the command line (removed from `args`)."""
    given = {}
    for item in dataclasses.fields(methods.get(name).Options):
        value = vars(args).pop(item.name)
        if value is not None:
            given[item.name] = tuple(value) if isinstance(value, list) else value
    return given


def _add_run_settings(p: argparse.ArgumentParser) -> None:
    """The training settings `train` and `ablate` share: one TrainConfig field each."""
    p.add_argument("--category", help="category under --data; 'all' trains every category into --out/<name>")
    p.add_argument("--preset", help="a named size of the method's networks ('full': the paper's, 'demo', and any "
                                    "the method adds); flags of the method's options win over it")
    p.add_argument("--epochs", type=int, help="passes over the training images (default: as long as the method's "
                                              "paper trains)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (overrides --epochs); with "
                                                 "--resume on a finished run, extends it")
    p.add_argument("--time-budget", help="instead of --max-steps: train for about this long (e.g. 45m, 2h); "
                                         "the steps are set from the first steps' time")
    p.add_argument("--recipe", choices=RECIPES, help=RECIPE_HELP)
    p.add_argument("--average-weights", action="store_true",
                   help="save as the model a moving average of the weights the optimisers train (horizon: a tenth "
                        "of the steps; EMA codebooks and DSR's general model stay as trained)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step (per process under torchrun)")
    p.add_argument("--image-size", type=int, default=256, help="side of the square the images are fitted to")
    p.add_argument("--fit", choices=FIT_MODES, default="resize",
                   help="squash images to a square (the paper) or pad to keep the aspect ratio")
    p.add_argument("--resize", choices=RESIZE_MODES, default="antialias",
                   help="antialiased bilinear (ours) or the authors' OpenCV bilinear without antialiasing")
    p.add_argument("--anomaly-source", help="folder of texture images (e.g. DTD); built-in if absent")
    p.add_argument("--source-colour", choices=SOURCE_COLOURS, default="color",
                   help="make anomaly sources grey ('auto': when the training images are grey)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16 autocast: several times faster on CPUs with AMX/AVX512-BF16 and on GPUs; "
                        "auto picks it where native")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last memory format (faster on CPUs)")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--cache-mb", type=int, default=2048,
                   help="memory for decoded training images and textures, reused by later epochs (0: none)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--score-window", type=int,
                   help="image score = max of the k x k mean-filtered map (default: the paper's 21, or with the "
                        "budget recipe the k that best separates simulated defects on held-out good images)")


def _add_train(commands: argparse._SubParsersAction, method: str = methods.DEFAULT) -> None:
    p = commands.add_parser("train", help="train a method on the defect-free images of a category",
                            formatter_class=_Help,
                            description="Train a method (--method; `draem methods` lists them). "
                                        "`draem train --method NAME --help` shows that method's options.")
    p.add_argument("--method", default=methods.DEFAULT, help="the method to train")
    p.add_argument("--data", help="dataset root or category folder: MVTec AD, DAGM 2007 or KolektorSDD2 "
                                  "layout (not needed with --resume)")
    p.add_argument("--normal", help="instead of --data: a plain folder of defect-free images")
    p.add_argument("--extra-normal", help="a folder of more defect-free images (e.g. `draem reviews export`'s "
                                          "good/) added to the training images of --data or --normal")
    p.add_argument("--out", required=True, help="run directory to create (or continue)")
    _add_run_settings(p)
    p.add_argument("--parallel-categories", action="store_true",
                   help="with --category all under torchrun: one category per process")
    p.add_argument("--validation-fraction", type=float, default=0.1,
                   help="share of the good images held out to calibrate thresholds (0: use training images)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--sync-bn", dest="sync_batchnorm", action="store_true",
                   help="with torchrun: BatchNorm statistics over the whole global batch")
    _add_method_options(p, method)


def _options(args: argparse.Namespace) -> dict:
    """The command's own options, without the parser's bookkeeping."""
    return {k: v for k, v in vars(args).items() if k not in ("command", "debug", "data_command")}


def _run_train(args: argparse.Namespace) -> None:
    from draem.engine.config import TrainConfig
    from draem.engine.train import train

    if args.data is None and args.normal is None and not args.resume:
        raise DraemError("train: --data or --normal is required (unless --resume continues a run)")
    given = method_options(args, args.method)
    options = _options(args)
    parallel = options.pop("parallel_categories")
    config = TrainConfig(**options, options=given)
    if args.category == ALL:
        from draem.engine.suite import train_all

        print("\n".join(str(p) for p in train_all(config, parallel)))
    else:
        print(train(config))


def _add_labelled_folders(p: argparse.ArgumentParser) -> None:
    """--normal / --abnormal / --masks: labelled plain folders (e.g. exported reviews) instead of --data."""
    p.add_argument("--normal", help="instead of --data: folder of defect-free images (e.g. reviews' good/)")
    p.add_argument("--abnormal", help="with --normal: folder of defective images (e.g. reviews' defective/)")
    p.add_argument("--masks", help="with --normal: folder of masks matched by file stem; without it, image-level "
                                   "metrics and thresholds only")


def _add_test(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("test", help="evaluate a trained run on a labelled test set")
    p.add_argument("--run", required=True, help="run directory (or model.pt)")
    p.add_argument("--data", help="dataset root or category folder (MVTec AD, DAGM 2007, KolektorSDD2)")
    p.add_argument("--category", help="category under --data; 'all' tests --run/<name> for every category "
                                      "and writes the paper's table (benchmark.csv, benchmark.md)")
    _add_labelled_folders(p)
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 where the CPU/GPU computes it natively (fast), else fp32 (exact)")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help=BACKEND_HELP)
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--out", help="where metrics.json goes (default: the run directory)")
    p.add_argument("--score-window", type=int,
                   help="override the model's image-score window (its thresholds were calibrated with its own)")
    p.add_argument("--resize", choices=RESIZE_MODES,
                   help="override how images and masks are resized: antialias (ours) or authors (OpenCV "
                        "bilinear without antialiasing, masks defective only where they stay 255)")


def _run_test(args: argparse.Namespace) -> None:
    from draem.engine.evaluate import EvaluationConfig, evaluate, format_table

    config = EvaluationConfig(**_options(args))
    if args.category == ALL:
        from draem.engine.suite import test_all

        test_all(config)
    else:
        print(format_table(evaluate(config)))


def _add_predict(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("predict", help="anomaly maps, overlays and decisions for new images")
    p.add_argument("--run", required=True, help="run directory (or model.pt)")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 where the CPU/GPU computes it natively (fast), else fp32 (exact)")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--map-format", choices=("png", "npy"), default="png",
                   help="anomaly maps as 16-bit PNG or float32 .npy")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help=BACKEND_HELP)


def _run_predict(args: argparse.Namespace) -> None:
    from draem.engine.predict import PredictConfig, predict

    done, failed = predict(PredictConfig(**_options(args)))
    print(f"{done} images predicted, results in {Path(args.out) / 'predictions.csv'}")
    if failed:
        raise DraemError(f"{failed} of {done + failed} inputs could not be read (listed in "
                         f"{Path(args.out) / 'predictions.csv'})", exit_code=3)


def _add_calibrate(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("calibrate", help="F1-optimal thresholds from labelled validation images")
    p.add_argument("--run", required=True, help="run directory (or model.pt)")
    p.add_argument("--data", help="labelled set in any supported layout (its test split is used)")
    p.add_argument("--category", help="category under --data when it holds several")
    _add_labelled_folders(p)
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 where the CPU/GPU computes it natively (fast), else fp32 (exact)")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")


def _run_calibrate(args: argparse.Namespace) -> None:
    from draem.engine.calibrate import recalibrate

    thresholds = recalibrate(**_options(args))
    print(f"image threshold {thresholds.image:.6f}, pixel threshold {thresholds.pixel:.6f} "
          f"({thresholds.normal_images} good, {thresholds.defective_images} defective images)")


def _add_data(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("data", help="datasets: the built-in demo data and downloads")
    data_commands = p.add_subparsers(dest="data_command", required=True)
    download = data_commands.add_parser("download", help="download and unpack MVTec AD or DTD")
    download.add_argument("name", choices=("mvtec", "dtd"), help="which dataset")
    download.add_argument("--to", required=True, help="folder to put the dataset in")
    demo = data_commands.add_parser("demo", help="write the built-in synthetic demo dataset")
    demo.add_argument("--out", required=True, help="folder to write the dataset into")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated surfaces")
    demo.add_argument("--image-size", type=int, default=128, help="side of the square images")


def _run_data(args: argparse.Namespace) -> None:
    if args.data_command == "download":
        from draem.data.download import fetch_dataset

        path = fetch_dataset(args.name, Path(args.to))
        print(path if args.name == "mvtec" else f"{path}  (use it as --anomaly-source)")
        return
    from draem.data.demo import generate_demo_dataset

    print(generate_demo_dataset(Path(args.out), seed=args.seed, image_size=args.image_size))


def _add_import_official(commands: argparse._SubParsersAction, method: str = methods.DEFAULT) -> None:
    p = commands.add_parser("import-official", help="turn the authors' released checkpoints into a run")
    p.add_argument("--method", default=methods.DEFAULT, help="the method whose checkpoints these are")
    for name, text in methods.get(method).official_files.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, help=text)
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--image-size", type=int, default=256, help="side of the square images are fitted to")


def _run_import_official(args: argparse.Namespace) -> None:
    from draem.deploy.official import import_official

    files = {name: getattr(args, name) for name in methods.get(args.method).official_files}
    print(import_official(args.method, files, args.out, args.image_size))


def _add_export(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("export", help="export a run's model ((image, valid) -> map, score) to ONNX")
    p.add_argument("--run", required=True, help="run directory (or model.pt)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format")
    p.add_argument("--out", required=True, help="file to write, e.g. model.onnx")
    p.add_argument("--int8", action="store_true", help="quantise to int8 (QDQ), calibrated on training images")
    p.add_argument("--calibration", help="with --int8: folder of defect-free images to calibrate on (default: "
                                         "the run's own training images)")


def _run_export(args: argparse.Namespace) -> None:
    from draem.data.folders import FolderDataset
    from draem.deploy.onnx import export_onnx
    from draem.deploy.quantize import export_int8

    if args.calibration and not args.int8:
        raise DraemError("--calibration is only used with --int8")
    if args.int8:
        calibration = FolderDataset(Path(args.calibration)).train_images() if args.calibration else None
        print(export_int8(args.run, args.out, calibration))
    else:
        print(export_onnx(args.run, args.out))


def _add_demo(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("demo", help="generate demo data, train, test and write reports (minutes)")
    p.add_argument("--out", default="draem-demo", help="folder for data, runs and reports")
    p.add_argument("--method", default=methods.DEFAULT, help="the method to train, with its demo preset")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data and of training")
    p.add_argument("--kinds", nargs="+", choices=DEMO_KINDS,
                   help=f"surface kinds to train (default: {' '.join(DEMO_DEFAULT_KINDS)})")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")


def _run_demo(args: argparse.Namespace) -> None:
    from draem.engine.demo import DemoConfig, run_demo

    methods.get(args.method)
    config = DemoConfig(out=args.out, method=args.method, seed=args.seed, device=args.device)
    if args.kinds:
        config.kinds = tuple(args.kinds)
    reports = run_demo(config)
    print("\nreports:\n" + "\n".join(str(p) for p in reports))
    print(f"\ninspect new images with the first run, then open http://127.0.0.1:8000/ in a browser:\n"
          f"draem serve --run {reports[0].parent}")


COMMANDS = {"demo": (_add_demo, _run_demo), "train": (_add_train, _run_train), "test": (_add_test, _run_test),
            "predict": (_add_predict, _run_predict), "calibrate": (_add_calibrate, _run_calibrate),
            "data": (_add_data, _run_data), "import-official": (_add_import_official, _run_import_official),
            "export": (_add_export, _run_export)}


def _add_methods(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("methods", help="list the methods, their papers and headline figures")


def _run_methods(args: argparse.Namespace) -> None:
    names = methods.available()
    width = max(map(len, names)) + 2
    for name in names:
        method = methods.get(name)
        default = " (default)" if name == methods.DEFAULT else ""
        print(f"{name:<{width}}{method.paper}{default}\n{'':<{width}}{method.headline}\n"
              f"{'':<{width}}paper length {method.paper_length}; presets {', '.join(method.presets)}")


COMMANDS["methods"] = (_add_methods, _run_methods)


def _setting(text: str) -> tuple[str, str]:
    """KEY=VALUE of `--set`, dashes in KEY read as underscores."""
    key, equals, value = text.partition("=")
    if not (key and equals):
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key.replace("-", "_"), value


def _add_ablate(commands: argparse._SubParsersAction, method: str = methods.DEFAULT) -> None:
    rows = ", ".join(row.name for row in methods.get(method).ablation_rows) or "none"
    p = commands.add_parser("ablate", help="train and test each row of a method's ablation table on one category",
                            description="Reproduce a paper's ablation table (DRAEM: Table 3) on one category: each "
                                        "row trains into --out/<row> (resumable) and is tested in fp32; writes "
                                        "ablation.csv and ablation.md beside the paper's figures.")
    p.add_argument("--method", default=methods.DEFAULT, help="the method whose ablation table to run")
    p.add_argument("--data", required=True, help="dataset root or category folder (MVTec AD, DAGM 2007, "
                                                 "KolektorSDD2 layout)")
    p.add_argument("--out", required=True, help="folder for the rows' runs and the tables")
    p.add_argument("--rows", nargs="+", help=f"names of the rows to run (default: all; {method}'s: {rows})")
    p.add_argument("--natural-images", help="folder of natural images (e.g. ImageNet) for the rows that use "
                                            "them; without it those rows are reported as not run")
    p.add_argument("--set", dest="settings", metavar="KEY=VALUE", type=_setting, action="append",
                   help="a method option for every row whose method has it and does not vary it, e.g. "
                        "recon_width=32 (repeatable)")
    _add_run_settings(p)


def _run_ablate(args: argparse.Namespace) -> None:
    from draem.engine.ablate import AblationConfig, ablate
    from draem.engine.config import TrainConfig

    options = _options(args)
    own = {name: options.pop(name) for name in ("out", "rows", "natural_images", "settings")}
    config = AblationConfig(train=TrainConfig(**options, out=own["out"]), out=own["out"], rows=own["rows"],
                            natural_images=own["natural_images"], settings=dict(own["settings"] or []))
    print(ablate(config).read_text())


COMMANDS["ablate"] = (_add_ablate, _run_ablate)
COMMANDS["serve"] = (add_serve, run_serve)
COMMANDS["reviews"] = (add_reviews, run_reviews)


def _method_in(argv: Sequence[str]) -> str:
    """The --method value of a command line (default: the default method), before the full parse."""
    for index, word in enumerate(argv):
        if word == "--method" and index + 1 < len(argv):
            return argv[index + 1]
        if word.startswith("--method="):
            return word.split("=", 1)[1]
    return methods.DEFAULT


def build_parser(method: str = methods.DEFAULT) -> argparse.ArgumentParser:
    """The parser of every command; `train`, `import-official` and `ablate` are those of `method`."""
    parser = argparse.ArgumentParser(prog="draem", description="Surface-anomaly detection: DRAEM and its family",
                                     formatter_class=_Help)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (add, _) in COMMANDS.items():
        if name in ("train", "import-official", "ablate"):
            add(commands, method)
        else:
            add(commands)
    for choice in commands.choices.values():
        choice.formatter_class = _Help
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `draem` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(_method_in(argv))
    except DraemError as exc:
        print(f"draem: error: {exc}", file=sys.stderr)
        return exc.exit_code
    args = parser.parse_args(argv)
    previous = log.handlers[:], log.level, log.propagate
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("draem: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if args.debug else logging.INFO)
    log.propagate = False
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
    finally:
        log.handlers[:], log.level, log.propagate = previous  # as it was for a caller in the same process
    return 0


if __name__ == "__main__":
    sys.exit(main())
