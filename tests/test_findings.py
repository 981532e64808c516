"""The report's findings store: what a chapter records, the conclusion reads back, checked against the
shipped model's fingerprint."""
from __future__ import annotations

import json

import numpy as np
import pytest

from zfcore.viz import findings


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.setenv("ZFCORE_FINDINGS", str(tmp_path / "f.json"))


def test_recorded_values_come_back_as_plain_json():
    findings.record("05", median=np.float32(0.5), per_layer={"conv1": np.arange(3)}, pair=(1, 2))
    findings.record("06", ok=True)
    assert findings.load("05") == {"median": 0.5, "per_layer": {"conv1": [0, 1, 2]}, "pair": [1, 2]}
    assert findings.load("06") == {"ok": True}


def test_missing_stale_nan_and_corrupt_records_are_clear_errors(tmp_path):
    with pytest.raises(findings.FindingsError, match="no findings of chapter 07.*run that chapter"):
        findings.load("07")
    findings.record("05", x=1)
    data = json.loads(findings.path().read_text())
    data["05"]["fingerprint"] = "0" * 16                      # recorded with another model
    findings.path().write_text(json.dumps(data))
    with pytest.raises(findings.FindingsError, match="another model or data"):
        findings.load("05")
    with pytest.raises(ValueError):
        findings.record("05", x=float("nan"))
    findings.path().write_text("{not json")
    with pytest.raises(findings.FindingsError, match="cannot read"):
        findings.load("05")


def test_fingerprint_covers_the_model_file(tmp_path, monkeypatch):
    fp = findings.fingerprint()
    findings.fingerprint.cache_clear()
    assert findings.fingerprint() == fp and len(fp) == 16     # stable: the same files, the same print
    fake = tmp_path / "zfcore" / "viz"
    fake.mkdir(parents=True)
    (tmp_path / "zfcore" / "assets" / "models").mkdir(parents=True)
    (tmp_path / "zfcore" / "assets" / "fashion_mnist").mkdir()
    for name in ("fmnist_zf.npz", "history.json"):
        (tmp_path / "zfcore" / "assets" / "models" / name).write_bytes(b"other")
    monkeypatch.setattr(findings, "__file__", str(fake / "findings.py"))
    findings.fingerprint.cache_clear()
    try:
        assert findings.fingerprint() != fp                   # other weights: another print
    finally:
        findings.fingerprint.cache_clear()


def _record_many(chapter, rounds):
    for r in range(rounds):
        findings.record(chapter, round=r)


def test_chapters_recording_at_once_keep_each_others_findings():
    """Chapters executed in parallel (report/build.py --jobs) record into the same file: none may lose
    another's record (a read-modify-write without the lock loses some)."""
    import multiprocessing as mp

    chapters = [f"{n:02d}" for n in range(1, 7)]
    # spawned, not forked: a fork of a multi-threaded process (a pytest-xdist worker) can deadlock
    procs = [mp.get_context("spawn").Process(target=_record_many, args=(c, 40)) for c in chapters]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert {c: findings.load(c) for c in chapters} == {c: {"round": 39} for c in chapters}
