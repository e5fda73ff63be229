"""Turn a method's released checkpoints (the authors' files) into a run directory."""

from __future__ import annotations

from pathlib import Path

from draem import methods
from draem.engine.run import ModelInfo, RunFiles, save_model, versions
from draem.errors import DraemError
from draem.files import write_json


def import_official(method: str, files: dict[str, str | Path], out: str | Path, image_size: int = 256) -> Path:
    """Write a run whose model holds the authors' weights; their models read BGR images (OpenCV)."""
    cls = methods.get(method)
    if not cls.official_files:
        raise DraemError(f"--method {method}: no released checkpoints to import for this method")
    paths = {name: Path(path) for name, path in files.items()}
    model = cls.from_official(paths)
    run = RunFiles(Path(out))
    if run.model.exists():
        raise DraemError(f"{run.model}: already exists; choose another --out")
    info = ModelInfo.of(model, image_size, fit="resize", channel_order="BGR", resize="authors")
    run.root.mkdir(parents=True, exist_ok=True)
    write_json(run.config, {"imported": {"method": method, **{k: str(v.absolute()) for k, v in paths.items()},
                                         "channel_order": "BGR", "image_size": image_size},
                            "versions": versions()})
    save_model(run.model, model, info)
    return run.model
