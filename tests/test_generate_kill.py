"""``lhcad-generate`` stopped by a signal: no orphaned worker, no temporary file, no traceback, exact resume.

The end-to-end cases generate a few tens of Pythia events each (10-20 s on two busy cores; marked
``slow`` like the other generation tests) and share one uninterrupted reference run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lhcad.data import storage
from lhcad.data.storage import read_sample

N_EVENTS, SHARD_SIZE, WORKERS, SEED = 60, 10, 2, 5
GENERATE = [sys.executable, "-m", "lhcad.cli.generate"]


def _args(out: Path) -> list[str]:
    return ["sample=signal", f"n_events={N_EVENTS}", f"shard_size={SHARD_SIZE}", f"workers={WORKERS}",
            f"seed={SEED}", f"out={out}", "progress=false", "batch_size=100"]


def _checksums(root: Path, sample: str = "signal") -> dict[str, str]:
    shards = json.loads((root / "manifest.json").read_text())["samples"][sample]["shards"]
    return {k: v["sha256"] for k, v in shards.items()}


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".tmp" in p.name]


# ------------------------------------------------------------------------------------------- processes


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _descendants(pid: int) -> dict[int, str]:
    """All live descendants of ``pid`` -> their start time (to tell a reused pid apart)."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))) is not None:
            parents.setdefault(int(st[1]), []).append(int(d.name))
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if (st := _stat(child)) is not None and child not in found:
                found[child] = st[19]
                todo.append(child)
    return found


def _alive(pid: int, start: str) -> bool:
    st = _stat(pid)
    return st is not None and st[19] == start and st[0] not in "ZX"


def _wait_dead(procs: dict[int, str], timeout: float = 10.0) -> list[int]:
    """Pids of ``procs`` still alive after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(_alive(p, s) for p, s in procs.items()):
            return []
        time.sleep(0.1)
    return [p for p, s in procs.items() if _alive(p, s)]


def _kill_leftovers(procs: dict[int, str]) -> None:
    """Do not leave orphans burning the shared CPUs when an assertion fails."""
    for pid, start in procs.items():
        if _alive(pid, start):
            os.kill(pid, signal.SIGKILL)


def _start_and_wait_mid_run(out: Path, log: Path) -> tuple[subprocess.Popen, dict[int, str]]:
    """Start ``lhcad-generate`` (own session) and return once a shard is finished and the workers run."""
    with open(log, "w") as fh:
        proc = subprocess.Popen([*GENERATE, *_args(out)], stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.time() + 120
    children: dict[int, str] = {}
    while time.time() < deadline and proc.poll() is None:
        children = _descendants(proc.pid)
        if list((out / "signal").glob("shard_*.h5")) and len(children) >= WORKERS:
            return proc, children
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"generation did not get going: {log.read_text()}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    """Shard checksums of the uninterrupted run."""
    out = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run([*GENERATE, *_args(out)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _checksums(out)


def _resume_command(text: str) -> list[str]:
    """The one ``lhcad-generate`` command a message gives, as arguments for this interpreter."""
    lines = [line for line in text.splitlines() if "lhcad-generate" in line]
    assert len(lines) == 1, f"expected one line with the resume command, got:\n{text}"
    commands = re.findall(r"`(lhcad-generate [^`]*)`", lines[0])
    assert len(commands) == 1, lines[0]
    words = shlex.split(commands[0])
    return [*GENERATE, *words[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_signal_stops_workers_cleanly_and_resume_is_exact(tmp_path, reference, how):
    """SIGTERM to the main process, or Ctrl-C (SIGINT to the process group), stops everything cleanly:
    workers and resource tracker gone, no temporary file, a consistent manifest, one line with the
    exact resume command, exit 128+signal, no traceback; the resumed dataset equals the uninterrupted one."""
    out, log = tmp_path / "data", tmp_path / "log.txt"
    proc, children = _start_and_wait_mid_run(out, log)
    try:
        if how == "SIGTERM":
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        rc = proc.wait(timeout=60)
        left = _wait_dead(children)
    finally:
        proc.kill()
        _kill_leftovers(children)
    text = log.read_text()
    assert not left, f"processes left running after {how}: {left}"
    assert rc == 128 + getattr(signal, how), text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert not _temporaries(out), _temporaries(out)
    done = _checksums(out)
    assert 1 <= len(done) < N_EVENTS // SHARD_SIZE, "the signal should land mid-run"
    read_sample(out, "signal")  # what was recorded is complete and verified
    assert {k: reference[k] for k in done} == done

    rerun = subprocess.run(_resume_command(text), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _checksums(out) == reference, "an event was lost or repeated"
    assert not _temporaries(out)


@pytest.mark.slow
def test_sigkill_leaves_no_orphans_and_resume_is_exact(tmp_path, reference):
    """SIGKILL to the main process: its workers and resource tracker die with it (no shard written
    after it); the next run adopts the shards finished before, removes the temporaries and completes exactly."""
    out, log = tmp_path / "data", tmp_path / "log.txt"
    proc, children = _start_and_wait_mid_run(out, log)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        left = _wait_dead(children)
    finally:
        _kill_leftovers(children)
    assert not left, f"processes left running after SIGKILL: {left}"
    recorded = _checksums(out)
    on_disk = sorted(p.name for p in (out / "signal").glob("shard_*.h5"))
    time.sleep(1.0)  # a surviving worker would write more shards meanwhile
    assert sorted(p.name for p in (out / "signal").glob("shard_*.h5")) == on_disk
    assert {k: reference[k] for k in recorded} == recorded

    # what a kill during a write leaves behind (names as the writers make them, pids of dead processes)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [out / f".manifest.json.tmp-{dead.pid}", out / "signal" / f".shard_00005.h5.tmp-{dead.pid}"]
    for path in stale:
        path.write_bytes(b"partial")
    subprocess.run([*GENERATE, *_args(out)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _checksums(out) == reference, "an event was lost or repeated"
    assert not _temporaries(out), _temporaries(out)


def test_stale_manifest_temporary_is_removed_by_the_next_writer(tmp_path):
    """Only the lock holder writes the manifest's temporary, so the next lock holder removes any it finds."""
    (tmp_path / ".manifest.json.tmp-1").write_bytes(b"{")
    (tmp_path / ".manifest.json.tmp-123456").write_bytes(b"{")
    storage.update_sample(tmp_path, "qcd", {"config": {}})
    assert not _temporaries(tmp_path)
    assert storage.load_manifest(tmp_path)["samples"]["qcd"]["config"] == {}


def test_interrupted_manifest_write_leaves_no_temporary(tmp_path, monkeypatch):
    """An exception (Ctrl-C, SIGTERM) while writing the manifest removes its temporary; the old one stays."""
    storage.update_sample(tmp_path, "qcd", {"config": {"a": 1}})

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(storage.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        storage.update_sample(tmp_path, "qcd", {"config": {"a": 2}})
    monkeypatch.undo()
    assert not _temporaries(tmp_path)
    assert storage.load_manifest(tmp_path)["samples"]["qcd"]["config"] == {"a": 1}
