"""The engine: results in task order, clear errors, and the Ray path in a private network."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from etl.engine import Engine
from etl.errors import EtlError


def square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_multiprocess_keeps_order(workers: int) -> None:
    assert Engine(workers=workers, progress=False).map(square, list(range(7))) == [
        0,
        1,
        4,
        9,
        16,
        25,
        36,
    ]


def test_bad_arguments() -> None:
    with pytest.raises(EtlError, match="unknown engine 'spark'; choose one of multiprocess, ray"):
        Engine(kind="spark")
    with pytest.raises(EtlError, match="workers=0"):
        Engine(workers=0)


RAY_SCRIPT = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from etl.engine import Engine
from etl.pipeline import EtlOptions, run_pipeline
import importlib.util
spec = importlib.util.spec_from_file_location("etl_fixtures", sys.argv[2])
fixtures = importlib.util.module_from_spec(spec); spec.loader.exec_module(fixtures)
raw = fixtures.write_handwritten_raw(Path(sys.argv[3]) / "raw")
for engine, out in (("multiprocess", "mp"), ("ray", "ray")):
    opts = EtlOptions(raw_dir=raw, out_dir=Path(sys.argv[3]) / out, sizes=(5, 10), vocab_size=60,
                      engine=Engine(kind=engine, workers=2, progress=False), partitions=3)
    run_pipeline("all", opts)
a = (Path(sys.argv[3]) / "mp/amazon-10/amazon-10.inter").read_bytes()
b = (Path(sys.argv[3]) / "ray/amazon-10/amazon-10.inter").read_bytes()
print("SAME" if a == b else "DIFFERENT")
"""


@pytest.mark.slow
@pytest.mark.network_ns
def test_ray_engine_same_bytes(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="ray is not installed")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("unshare or ip not available: cannot make a private network namespace")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.strip()}")
    repo = Path(__file__).resolve().parents[2]
    script = tmp_path / "ray_check.py"
    script.write_text(RAY_SCRIPT)
    cmd = (
        f"ip link set lo up && {sys.executable} {script} {repo} "
        f"{Path(__file__).with_name('conftest.py')} {tmp_path}"
    )
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    run = subprocess.run(
        ["unshare", "-rn", "sh", "-c", cmd], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "SAME"
