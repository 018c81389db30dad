"""The ETL command line under real signals: a killed pool worker, Ctrl-C, a FIFO input, two
runs on one output folder. Each runs `scripts/scaling_datasets.py`'s `main` in its own
session, so every process it starts can be found (and must be gone) afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from etl.manifest import output_lock

REPO = Path(__file__).resolve().parents[2]

# The CLI, with the ratings task made slow (it marks its start in MARK_DIR, then sleeps):
# the worker running it is a real pool worker, killed or interrupted mid-task.
SLOW_CLI = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {repo!r})
    import etl.partition

    real = etl.partition._ratings_task

    def slow(task):
        open(os.path.join({marks!r}, str(os.getpid())), "w").close()
        time.sleep({sleep})
        return real(task)

    etl.partition._ratings_task = slow
    from etl.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields after "pid (comm)"


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry))
    return found


def start_cli(tmp_path: Path, raw: Path, out: Path, *extra: str, sleep: float = 120) -> tuple:
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI.format(repo=str(REPO), marks=str(marks), sleep=sleep))
    cmd = [
        sys.executable,
        str(script),
        "--step",
        "all",
        "--raw-dir",
        str(raw),
        "--out-dir",
        str(out),
        "--sizes",
        "5,10",
        "--vocab-size",
        "60",
        "--no-progress",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # Ctrl-C as in a terminal: a suite started in the background by a non-interactive shell
        # inherits SIGINT ignored, and Python then keeps ignoring it in the ETL.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    return proc, marks


def wait_for_mark(marks: Path, proc: subprocess.Popen, timeout: float = 60) -> int:
    """The pid of the first worker that started a ratings task."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(marks.iterdir())
        if found:
            return int(found[0].name)
        if proc.poll() is not None:
            raise AssertionError(f"the ETL ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("no worker started a ratings task")


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int | None, str, str]:
    """Wait for the ETL; on timeout kill its whole session (so a hang fails, never blocks)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err
    return proc.returncode, out, err


def assert_nothing_left(sid: int) -> None:
    deadline = time.monotonic() + 5
    while session_members(sid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = session_members(sid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"processes left behind: {left}"


def test_killed_worker_ends_the_step_with_one_line(handwritten_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc, marks = start_cli(tmp_path, handwritten_raw, out, "--workers", "2")
    worker = wait_for_mark(marks, proc)
    assert worker != proc.pid
    start = time.monotonic()
    os.kill(worker, signal.SIGKILL)  # what the out-of-memory killer does
    code, _, err = finish(proc, timeout=30)
    assert code is not None, "the ETL hung after its worker was killed"
    assert time.monotonic() - start < 30
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: a worker process (pid {worker}) was killed by SIGKILL")
    assert "while running task 1 (all_csv_files.csv, bytes 0-" in err
    assert "of partition ratings; rerun with fewer --workers or a smaller --chunk-mb" in err
    assert_nothing_left(proc.pid)
    assert not (out / "work" / "ratings").exists()  # nothing published for the step


def test_ctrl_c_stops_workers_without_a_traceback(handwritten_raw: Path, tmp_path: Path) -> None:
    proc, marks = start_cli(tmp_path, handwritten_raw, tmp_path / "out", "--workers", "2")
    wait_for_mark(marks, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole group
    code, _, err = finish(proc, timeout=30)
    assert code == 130
    assert err == (
        "interrupted: finished steps are kept and nothing half-written is published; "
        "rerun the same command to resume\n"
    )
    assert_nothing_left(proc.pid)


def test_killed_parent_leaves_no_worker_nor_lock(handwritten_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc, marks = start_cli(tmp_path, handwritten_raw, out, "--workers", "2", sleep=2)
    wait_for_mark(marks, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    with output_lock(out):  # free at once, though its workers still run: they do not hold it
        pass
    # The busy worker ends its task (2 s), the idle one at once: their pipe to the parent
    # is closed. No worker is left waiting for ever.
    deadline = time.monotonic() + 20
    while session_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert_nothing_left(proc.pid)


def test_fifo_where_an_input_should_be(handwritten_raw: Path, tmp_path: Path) -> None:
    fifo = handwritten_raw / "all_csv_files.csv"
    fifo.unlink()
    os.mkfifo(fifo)
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "scaling_datasets.py"),
        "--step",
        "partition_big_files",
        "--raw-dir",
        str(handwritten_raw),
        "--out-dir",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    code, _, err = finish(proc, timeout=30)
    assert code == 1, "the ETL blocked on the FIFO"
    assert err == (
        f"error: input {fifo} is a FIFO (named pipe), not a regular file; replace it with "
        "the file\n"
    )


def test_second_run_on_one_output_folder_is_refused(handwritten_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first, marks = start_cli(tmp_path, handwritten_raw, out, "--workers", "2")
    wait_for_mark(marks, first)
    second = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "scaling_datasets.py"),
            "--step",
            "all",
            "--raw-dir",
            str(handwritten_raw),
            "--out-dir",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert second.stderr == (
        f"error: another ETL run (pid {first.pid}) is writing to {out}; wait for it to end, "
        "or pass another --out-dir\n"
    )
    # The lock dies with its holder, even killed with SIGKILL: the next run goes ahead.
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()
    third = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "scaling_datasets.py"),
            "--step",
            "all",
            "--raw-dir",
            str(handwritten_raw),
            "--out-dir",
            str(out),
            "--sizes",
            "5,10",
            "--vocab-size",
            "60",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert third.returncode == 0, third.stderr
    assert (out / "amazon-10" / "amazon-10.inter").is_file()


@pytest.fixture(autouse=True)
def _linux_only() -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc (Linux) to find the processes of a session")
