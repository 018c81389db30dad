"""The command-line scripts' ``main`` functions, importable from tests (scripts/ is no package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scaling_report_main(argv: list[str]) -> int:
    return _load("scaling_report").main(argv)


def sweep_main(argv: list[str]) -> int:
    return _load("sweep").main(argv)
