"""End-to-end generation with Pythia 8 + FastJet: physics of the samples, determinism, resume, integrity."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from lhcad.cli._paths import CONF_DIR
from lhcad.cli.generate import config_from_hydra
from lhcad.data.generate import GenerationConfig, GenerationError, generate
from lhcad.data.storage import DatasetError, read_sample

pytestmark = pytest.mark.slow


def make_config(sample: str, n: int, out: Path, **overrides) -> GenerationConfig:
    """The default generation config (conf/generate.yaml) with a few overrides."""
    with initialize_config_dir(config_dir=CONF_DIR):
        cfg = compose("generate", overrides=[f"sample={sample}", f"n_events={n}", f"out={out}", "seed=7"])
    return replace(config_from_hydra(cfg), **overrides)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """300 signal and 300 QCD events, two workers, shards of 100."""
    out = tmp_path_factory.mktemp("tiny")
    for sample in ("signal", "qcd"):
        generate(make_config(sample, 300, out, workers=2, shard_size=100), progress=False)
    return out


def tau21(d, j):
    return d[f"j{j}_tau2"] / d[f"j{j}_tau1"]


def test_signal_jets_peak_at_the_resonance_masses(tiny):
    sig = read_sample(tiny, "signal")
    assert len(sig["mjj"]) == 300 and np.all(sig["label"] == 1)
    assert 400 < np.median(sig["j1_m"]) < 600  # X -> qq, 500 GeV
    assert 60 < np.median(sig["j2_m"]) < 140  # Y -> qq, 100 GeV
    assert 3000 < np.median(sig["mjj"]) < 3700  # W', 3.5 TeV


def test_qcd_is_less_two_pronged_than_signal_and_triggered(tiny):
    qcd, sig = read_sample(tiny, "qcd"), read_sample(tiny, "signal")
    assert np.all(qcd["label"] == 0)
    for j in (1, 2):
        assert tau21(qcd, j).mean() > tau21(sig, j).mean()
    for d in (qcd, sig):
        assert np.all(np.maximum(d["j1_pt"], d["j2_pt"]) > 1200.0)
        assert np.all(d["j1_m"] >= d["j2_m"])
    # QCD: falling mjj spectrum above the trigger threshold, light jets
    assert np.median(qcd["mjj"]) < np.median(sig["mjj"]) and np.median(qcd["j1_m"]) < 250


def test_same_seed_same_events_whatever_the_workers(tiny, tmp_path):
    generate(make_config("signal", 200, tmp_path, workers=1, shard_size=100), progress=False)
    a, b = read_sample(tiny, "signal"), read_sample(tmp_path, "signal")
    for k in b:
        np.testing.assert_array_equal(a[k][:200], b[k])
    manifest_a = json.loads((tiny / "manifest.json").read_text())["samples"]["signal"]["shards"]
    manifest_b = json.loads((tmp_path / "manifest.json").read_text())["samples"]["signal"]["shards"]
    assert manifest_a["0"]["sha256"] == manifest_b["0"]["sha256"]  # byte-identical shard files


def test_another_seed_gives_other_events(tiny, tmp_path):
    generate(make_config("signal", 100, tmp_path, workers=1, shard_size=100, seed=8), progress=False)
    assert not np.array_equal(read_sample(tiny, "signal")["mjj"][:100], read_sample(tmp_path, "signal")["mjj"])


def test_resume_after_a_killed_run(tmp_path):
    """SIGKILL the generator mid-run: shards it finished are kept (adopted into the manifest, not
    generated again) and re-running completes the sample identically."""
    ref = tmp_path / "uninterrupted"
    generate(make_config("signal", 300, ref, workers=2, shard_size=50), progress=False)
    tmp_path = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lhcad.cli.generate", "sample=signal", "n_events=300", "shard_size=50",
           "workers=1", "seed=7", f"out={tmp_path}", "progress=false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "signal").glob("shard_*.record.json")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # finished = shard file and its journal written (a shard caught between the two is made again)
    journals = (tmp_path / "signal").glob("shard_*.record.json")
    finished = {p.with_name(p.name.replace(".record.json", ".h5")) for p in journals}
    finished = {p: p.stat().st_mtime_ns for p in finished}
    assert 1 <= len(finished) < 6, "the kill should land mid-run"
    rerun = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert f"{len(finished)} finished shard(s) missing from the manifest were verified and recorded" in rerun.stdout
    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "finished shards are not generated again"
    assert not list((tmp_path / "signal").glob(".*tmp*")), "temporary files are cleaned up"
    assert not list((tmp_path / "signal").glob("*.json")), "journal files are removed once recorded"
    resumed = read_sample(tmp_path, "signal")
    expected = read_sample(ref, "signal")
    for k in expected:
        np.testing.assert_array_equal(resumed[k], expected[k])


def test_manifest_is_rewritten_in_batches_not_per_shard(tmp_path, monkeypatch):
    """Generating many shards rewrites the manifest a bounded number of times (not once per shard)."""
    from lhcad.data import storage

    writes = []
    real = storage.save_manifest
    monkeypatch.setattr(storage, "save_manifest", lambda root, m: (writes.append(1), real(root, m)))
    generate(make_config("signal", 200, tmp_path, workers=1, shard_size=10), progress=False)
    assert len(read_sample(tmp_path, "signal")["mjj"]) == 200
    assert len(writes) <= 3  # claim the sample, the batch at the end (and at most one on the way)


def test_rerun_skips_complete_shards(tiny):
    before = {p: p.stat().st_mtime_ns for p in (tiny / "qcd").glob("*.h5")}
    generate(make_config("qcd", 300, tiny, workers=2, shard_size=100), progress=False)
    assert {p: p.stat().st_mtime_ns for p in (tiny / "qcd").glob("*.h5")} == before


def test_conflicting_configuration_is_refused(tiny):
    with pytest.raises(GenerationError, match="different configuration.*seed"):
        generate(make_config("qcd", 300, tiny, workers=1, shard_size=100, seed=99), progress=False)


def test_truncated_or_tampered_shard_is_named(tiny, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    shard = copy / "signal" / "shard_00001.h5"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"shard_00001\.h5.*(corrupt|modified)"):
        read_sample(copy, "signal")
    shard.unlink()
    with pytest.raises(DatasetError, match=r"shard_00001\.h5.*missing"):
        read_sample(copy, "signal")


def test_missing_dataset_and_sample_say_how_to_make_them(tmp_path, tiny):
    with pytest.raises(DatasetError, match="lhcad-generate"):
        read_sample(tmp_path / "nothing", "qcd")
    with pytest.raises(DatasetError, match="no sample 'sim'.*lhcad-generate sample=sim"):
        read_sample(tiny, "sim")


def test_bad_generation_requests(tmp_path):
    with pytest.raises(ValueError, match="unknown sample"):
        make_config("zprime", 10, tmp_path)
    with pytest.raises(ValueError, match="excluded windows"):
        cfg = make_config("qcd", 10, tmp_path)
        replace(cfg, sample="outliers", physics={**cfg.physics, "outlier_masses": [[500, 40]]})
    with pytest.raises(ValueError, match="n_events must be positive"):
        make_config("qcd", 0, tmp_path)


def test_outliers_carry_their_masses_and_exclude_the_signal(tmp_path):
    cfg = make_config("outliers", 60, tmp_path, workers=1, shard_size=20)
    generate(cfg, progress=False)
    d = read_sample(tmp_path, "outliers")
    points = {tuple(p) for p in np.stack([d["truth_mx"], d["truth_my"]], 1).tolist()}
    assert len(points) == 3
    for mx, my in points:
        assert not (420 <= mx <= 580 or 420 <= my <= 580 or 70 <= mx <= 130 or 70 <= my <= 130)
    # the heavier jet follows the heavier of the two resonances
    heavy = np.maximum(d["truth_mx"], d["truth_my"])
    assert np.median(d["j1_m"] / heavy) == pytest.approx(1.0, abs=0.2)


def test_images_and_constituents_are_stored_and_read_back(tmp_path):
    jets = replace(make_config("signal", 1, tmp_path).jets, images=True, n_constituents=20)
    generate(make_config("signal", 60, tmp_path, workers=1, shard_size=30, jets=jets), progress=False)
    d = read_sample(tmp_path, "signal")
    assert d["j1_image"].shape == (60, 40, 40) and d["j2_constituents"].shape == (60, 20, 4)
    np.testing.assert_allclose(d["j1_image"].sum(axis=(1, 2)), 1.0, rtol=1e-5)
    # the constituents' scalar pT sum is close to (and above) the jet pT for these narrow jets
    lead = d["j1_constituents"][:, :, 0].sum(axis=1)
    assert np.median(lead / d["j1_pt"]) > 0.7


def test_missing_pythia_settings_database_is_named(monkeypatch):
    """Without its xmldoc folder Pythia rejects every setting; say so instead of blaming the first one."""
    from lhcad.data.pythia import PythiaError, make_pythia

    monkeypatch.setenv("PYTHIA8DATA", "/nonexistent/xmldoc")
    with pytest.raises(PythiaError, match="settings database.*PYTHIA8DATA='/nonexistent/xmldoc'"):
        make_pythia(["Beams:eCM = 13000."], seed=1)


# ------------------------------------------------------------------------------------ the command line

GENERATE = [sys.executable, "-m", "lhcad.cli.generate"]


def run_generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*GENERATE, *args], capture_output=True, text=True, timeout=300)


def assert_one_sentence(proc: subprocess.CompletedProcess, rc: int, *needles: str) -> str:
    """Exit status ``rc``, no traceback, one line of output holding every needle."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == rc, text
    assert "Traceback" not in text and "Error executing job" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    for needle in needles:
        assert needle in lines[0], text
    return lines[0]


def test_conflicting_configuration_is_one_sentence(tiny):
    proc = run_generate("sample=qcd", "n_events=300", "shard_size=100", "seed=99", f"out={tiny}",
                        "progress=false")
    line = assert_one_sentence(proc, 2, "different configuration", "seed")
    before = shard_checksums(tiny, "qcd")
    again = subprocess.run(hinted_command(line), capture_output=True, text=True, timeout=300)  # what is there
    assert again.returncode == 0 and shard_checksums(tiny, "qcd") == before, again.stdout + again.stderr


def test_setting_pythia_rejects_is_one_sentence(tmp_path):
    proc = run_generate("sample=qcd", "n_events=10", f"out={tmp_path}", "workers=1", "progress=false",
                        'physics.extra_settings=["Foo:bar = 1"]')
    text = proc.stdout + proc.stderr  # Pythia prints its own complaint first
    assert proc.returncode == 2 and "Traceback" not in text, text
    assert "Pythia rejected the setting 'Foo:bar = 1'" in text.strip().splitlines()[-1], text


def test_output_path_that_is_a_file_is_one_sentence(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a dataset")
    for out in (afile, afile / "sub"):
        proc = run_generate("sample=qcd", "n_events=10", f"out={out}", "progress=false")
        assert_one_sentence(proc, 2, str(afile), "not a directory")
    assert afile.read_text() == "not a dataset"


@pytest.mark.parametrize(
    "bad, needle", [("sample=zprime", "unknown sample"), ("n_events=0", "n_events must be positive")]
)
def test_bad_generation_request_is_one_sentence(tmp_path, bad, needle):
    proc = run_generate("sample=qcd", "n_events=10", f"out={tmp_path}", "progress=false", bad)
    assert_one_sentence(proc, 2, needle)
    assert not (tmp_path / "manifest.json").exists()


def hinted_command(text: str) -> list[str]:
    """The ``lhcad-generate`` command quoted in a message, as arguments for this interpreter."""
    commands = re.findall(r"`(lhcad-generate [^`]*)`", text)
    assert len(commands) == 1, text
    return [*GENERATE, *shlex.split(commands[0])[1:]]


def shard_checksums(root: Path, sample: str) -> dict[str, str]:
    shards = json.loads((root / "manifest.json").read_text())["samples"][sample]["shards"]
    return {k: v["sha256"] for k, v in shards.items()}


def test_every_hint_is_the_command_that_works(tmp_path, caplog):
    """Corrupt, missing and unrecorded shards: the message's command (seed, shard_size, n_events and the
    non-default physics and jet settings from the manifest) is accepted and restores the exact dataset."""
    out = tmp_path / "data"
    made = run_generate("sample=signal", "n_events=30", "shard_size=10", "seed=11", f"out={out}", "workers=1",
                        "batch_size=100", "physics.m_x=450.0", "jets.n_constituents=4", "progress=false")
    assert made.returncode == 0, made.stdout + made.stderr
    expected = shard_checksums(out, "signal")
    shard = out / "signal" / "shard_00001.h5"

    def follow(text: str) -> None:
        proc = subprocess.run(hinted_command(text), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, text + "\n" + proc.stdout + proc.stderr
        assert shard_checksums(out, "signal") == expected
        read_sample(out, "signal")

    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="corrupt") as info:
        read_sample(out, "signal")
    follow(str(info.value))

    shard.unlink()
    with pytest.raises(DatasetError, match="missing") as info:
        read_sample(out, "signal")
    follow(str(info.value))

    from lhcad.data import storage

    with storage.edit_manifest(out) as manifest:
        del manifest["samples"]["signal"]["shards"]["2"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="lhcad.data.storage"):
        read_sample(out, "signal")
    assert "incomplete" in caplog.text
    follow(caplog.text)


def test_hints_round_trip_through_the_command_line(tmp_path):
    """The command built for a configuration composes (Hydra) back into the same configuration, quoting
    included: paths with spaces, quotes and '${', Pythia strings with '=' and spaces, lists and mappings."""
    from lhcad.data.generation_config import generate_command

    base = make_config("outliers", 10, tmp_path)
    physics = {**base.physics, "m_wprime": 3000.0, "outlier_masses": [[200, 40], [800, 250.5]],
               "outlier_exclude": {"m_x": [400.0, 600.0], "m_y": [60.0, 140.0]},
               "extra_settings": ["TimeShower:pTmin = 0.9", "StringZ:aLund=0.6"]}
    jets = replace(base.jets, images=True, R=0.8)
    out = tmp_path / "a dir" / 'it\'s "q" ${x}'
    cfg = replace(base, n_events=123, out=str(out), seed=3, shard_size=7, workers=3, batch_size=50,
                  physics=physics, jets=jets)
    words = shlex.split(generate_command(cfg))
    assert words[0] == "lhcad-generate"
    with initialize_config_dir(config_dir=CONF_DIR):
        back = config_from_hydra(compose("generate", overrides=words[1:]))
    assert back == cfg
    # defaults are left out, the keys that identify the sample are always there
    plain = make_config("qcd", 50, tmp_path)
    assert shlex.split(generate_command(plain))[1:] == [
        "sample=qcd", "n_events=50", f"out={tmp_path}", "seed=7", f"shard_size={plain.shard_size}"]


def test_hints_for_a_manifest_without_physics(fixture_dir, tmp_path):
    """Manifests written before the physics settings were recorded (the committed fixture) still give
    a command whose configuration is the one on disk."""
    import shutil

    copy = tmp_path / "fixture"
    shutil.copytree(fixture_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for sample, entry in manifest["samples"].items():
        (copy / entry["shards"]["0"]["file"]).unlink()
        with pytest.raises(DatasetError, match="missing") as info:
            read_sample(copy, sample)
        words = hinted_command(str(info.value))[len(GENERATE):]
        with initialize_config_dir(config_dir=CONF_DIR):
            cfg = config_from_hydra(compose("generate", overrides=words))
        assert cfg.identity_hash() == entry["config_hash"], (sample, words)
        assert cfg.n_events == entry["n_events"] and cfg.sample == sample


def _generate_in_a_joblib_worker(out: str) -> int:
    from lhcad.data.generate import generate as gen

    return gen(make_config("signal", 200, Path(out), workers=2, shard_size=100), progress=False)["n_events"]


def test_generation_inside_a_joblib_job_starts_its_workers(tmp_path):
    """A ``train.py -m`` job (a loky process) that generates a missing sample: its generator workers
    start (a spawned child inherits the parent's default start method, there ``loky``)."""
    from joblib import Parallel, delayed

    # n_jobs=2: even one task then runs in a loky process (n_jobs=1 would run it here)
    (n,) = Parallel(n_jobs=2, backend="loky")([delayed(_generate_in_a_joblib_worker)(str(tmp_path))])
    assert n == 200 and len(read_sample(tmp_path, "signal")["mjj"]) == 200


def test_a_failed_generation_in_a_run_says_what_happened(tmp_path, monkeypatch):
    """Only a configuration conflict is reported as one; a dead worker is named as such."""
    from omegaconf import OmegaConf

    from lhcad.data import generate as gen_module
    from lhcad.pipeline import prepare_dataset

    def dies(cfg, progress):
        raise gen_module.WorkerDied("a worker process died (killed, or out of memory?)")

    monkeypatch.setattr(gen_module, "generate", dies)
    data = OmegaConf.load(Path(CONF_DIR) / "data" / "lhco_like.yaml")
    data.root = str(tmp_path)
    with pytest.raises(DatasetError, match=r"generating .*/qcd failed: a worker process died.*rerunning resumes"):
        prepare_dataset(data, ("qcd",), images=False, progress=False)
