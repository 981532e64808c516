"""The record of the ORIGINAL huybery/VisualizingCNN's outputs (zfcore.comparison.record), which notebook 06
shows when no clone is configured.

Always: the record's schema and provenance (commit, file hashes, date, machine, versions), its weights and
input (hashes equal to zfcore's seeded VGG16 and the prepared cat photo), its claims (zfcore and the
original agree on the same switches), its pictures against the re-creation (which equals the original,
tests/test_original.py), the tolerances of ``check`` and the command's errors. With a clone
(``ZFCORE_HUYBERY=/path/to/VisualizingCNN`` and OpenCV): a new run of the original agrees with the record.
"""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from datetime import datetime

import numpy as np
import pytest

from zfcore.comparison import huybery, original, record
from zfcore.errors import ArgumentError

VGG16_CONVS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
               "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
HEX = re.compile(r"[0-9a-f]+")


@pytest.fixture(scope="module")
def saved():
    pytest.importorskip("PIL")
    return record.load()


@pytest.fixture(scope="module")
def vgg16():
    """zfcore's seeded random VGG16 and the cat photo as the original feeds it."""
    pytest.importorskip("torch")
    pytest.importorskip("skimage")
    from zfcore import models

    return models.build_model(record.ARCH, seed=record.SEED), record.chelsea_input()


# ------------------------------------------------------------------------------------------------
# the record as committed

def test_record_is_small_and_has_its_schema():
    raw = json.loads(record.RECORD.read_text())
    assert raw["schema"] == record.SCHEMA
    assert set(raw) == {"schema", "provenance", "weights", "input", "layers", "panels"}
    files = [record.RECORD] + [record.RECORD.parent / p["file"] for b in raw["panels"].values()
                               for p in b.values()]
    assert sorted(files[1:]) == sorted(record.RECORD.with_suffix("").glob("*.png"))
    assert sum(f.stat().st_size for f in files) < 1_000_000


def test_load_refuses_a_changed_picture(tmp_path):
    pytest.importorskip("PIL")
    saved = record.load()
    path = record.save(saved, tmp_path / "run.json")
    again = record.load(path)
    for name, both in saved["panels"].items():
        for key, p in both.items():
            np.testing.assert_array_equal(again["panels"][name][key]["image"], p["image"])
    picture = tmp_path / "run" / "conv4_2-zero.png"
    img = record.decode_png(picture.read_bytes()).copy()
    img[0, 0] ^= 1
    picture.write_bytes(record.encode_png(img))
    with pytest.raises(ArgumentError, match="conv4_2-zero.png: not the picture"):
        record.load(path)


def test_record_provenance(saved):
    prov = saved["provenance"]
    assert prov["repository"] == original.URL
    assert len(prov["commit"]) == 40 and HEX.fullmatch(prov["commit"])
    assert set(prov["files"]) == set(original.FILES)
    assert all(len(h) == 64 and HEX.fullmatch(h) for h in prov["files"].values())
    assert prov["command"].startswith("python -m zfcore.comparison.record --clone ")
    assert datetime.fromisoformat(prov["date"]).tzinfo is not None
    assert {"platform", "processor", "cpu capability", "torch threads"} <= set(prov["machine"])
    versions = prov["versions"]
    assert all(versions[k] for k in ("python", "numpy", "torch", "torchvision", "opencv", "zfcore"))


def test_record_claims(saved):
    """Every conv layer of VGG16, one selected position each; zfcore and the original (biases zeroed)
    within float32 rounding on the same switches; the published biases at least double the output."""
    rows = saved["layers"]
    assert [r["layer"] for r in rows] == VGG16_CONVS
    for r in rows:
        assert r["ties"] == 1 and len(r["position"]) == 2 and r["value"] > 0, r
        assert r["same, on zfcore's switches"] < record.ROUNDING, r
        assert r["support zfcore"] == r["support original on zfcore's switches"], r
        assert r["original: published vs bias zeroed"] > 1, r
        assert r["support original (published)"] > 0.99, r
    by = {r["layer"]: r for r in rows}
    names = huybery.layer_names("vgg16")
    assert list(saved["panels"]) == names
    for name, both in saved["panels"].items():
        assert set(both) == {"zero", "published"}
        shown = [both[k]["image"].astype(float) for k in ("zero", "published")]
        assert np.abs(shown[0] - shown[1]).mean() > 1, name              # the biases show
        for p in both.values():
            assert p["feature"] == by[name]["feature"]
            assert p["image"].shape == (224, 224, 3) and p["image"].dtype == np.uint8
            assert p["image"].min() == 0 and p["image"].max() == 255        # min-max to uint8


def test_record_is_of_zfcore_weights_and_input(saved, vgg16):
    net, x = vgg16
    assert saved["weights"]["arch"] == record.ARCH and saved["weights"]["seed"] == record.SEED
    assert record.params_sha256(net.params) == saved["weights"]["sha256"]
    assert record.sha256(x) == saved["input"]["sha256"]


def test_record_pictures_match_the_recreation(saved, vgg16):
    """The re-creation without deconv biases (equal to the original's own code to 1e-6, see
    tests/test_original.py) selects the recorded maps and positions and draws the recorded pictures."""
    net, x = vgg16
    rec = huybery.Recreation(net.spec, net.params, deconv_bias="zero")
    rec.forward(x)
    by = {r["layer"]: r for r in saved["layers"]}
    for name, both in saved["panels"].items():
        img, sel = rec.project(name, scale="uint8")
        expected = (by[name]["feature"], [by[name]["position"]])
        assert (sel.feature, [list(p) for p in sel.positions]) == expected, name
        assert np.abs(img.astype(int) - both["zero"]["image"]).max() <= 1, name


# ------------------------------------------------------------------------------------------------
# the pieces, against independent references

def test_png_round_trip_and_hashes():
    pytest.importorskip("PIL")
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    np.testing.assert_array_equal(record.decode_png(record.encode_png(img)), img)
    a = np.zeros((2, 3), np.float32)
    assert record.sha256(a) != record.sha256(a.reshape(3, 2)) != record.sha256(a.astype(np.float64))
    p = {"b": np.ones(2, np.float32), "a": np.zeros(3, np.float32)}
    assert record.params_sha256(p) == record.params_sha256(dict(reversed(list(p.items()))))
    assert record.params_sha256(p) != record.params_sha256({**p, "a": np.full(3, 1e-7, np.float32)})


def _as_run(saved):
    """A record read back as if it were a new run (what ``measure`` returns)."""
    return {"layers": copy.deepcopy(saved["layers"]),
            "panels": {n: {k: {"feature": p["feature"], "image": p["image"].copy()} for k, p in b.items()}
                       for n, b in saved["panels"].items()}}


def test_check_accepts_rounding_and_flags_real_changes(saved):
    assert record.check(saved, _as_run(saved)) == []
    near = _as_run(saved)
    near["layers"][5]["original (published biases) vs zfcore"] *= 1.001
    near["layers"][5]["same, on zfcore's switches"] = 9e-6
    near["panels"]["conv4_2"]["zero"]["image"][:6] ^= 1          # one grey level, 6 rows in 224
    assert record.check(saved, near) == []
    bad = _as_run(saved)
    bad["layers"][2]["feature"] += 1
    bad["layers"][3]["same, on zfcore's switches"] = 1e-3
    bad["layers"][4]["original: published vs bias zeroed"] *= 1.5
    bad["panels"]["conv5_3"]["published"]["image"][:40] = 0
    bad["panels"]["conv3_3"]["zero"]["feature"] += 1
    problems = record.check(saved, bad)
    assert len(problems) == 5, problems
    assert "conv2_1: feature" in problems[0] and "conv2_2: same, on zfcore's switches" in problems[1]
    assert any("conv5_3 published" in p and "grey level" in p for p in problems)
    short = _as_run(saved)
    short["layers"].pop()
    assert "layers differ" in record.check(saved, short)[0]


def test_clone_commit(tmp_path):
    with pytest.raises(ArgumentError, match="pass --commit"):
        record.clone_commit(tmp_path)
    with pytest.raises(ArgumentError, match="40-digit"):
        record.clone_commit(tmp_path, "54ed747")
    full = "54ed747372b1213c622fb5777ddbd2fa474605ac"
    assert record.clone_commit(tmp_path, full) == full
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    try:
        subprocess.run(git + ["init", "-q"], check=True)
        (tmp_path / "f").write_text("x")
        subprocess.run(git + ["add", "f"], check=True)
        subprocess.run(git + ["commit", "-q", "-m", "x"], check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no git")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert record.clone_commit(tmp_path) == head == record.clone_commit(tmp_path, head)
    with pytest.raises(ArgumentError, match="the clone is at"):
        record.clone_commit(tmp_path, full)


def test_command_refuses_a_folder_that_is_not_a_clone(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert record.main(["--clone", str(tmp_path), "--commit", "0" * 40, "--out", str(out)]) == 2
    assert "missing main.py" in capsys.readouterr().err and not out.exists()
    assert record.main(["--clone", str(tmp_path / "nowhere"), "--check", "--out", str(out)]) == 2


# ------------------------------------------------------------------------------------------------
# with a clone ($ZFCORE_HUYBERY): a new run of the original agrees with the record

def test_new_run_of_the_original_agrees_with_the_record(saved, vgg16):
    path = os.environ.get(original.ENV)
    if not path:
        pytest.skip(f"no clone of huybery/VisualizingCNN: set ${original.ENV}")
    pytest.importorskip("cv2")
    net, x = vgg16
    clone = original.find_clone(path)
    if record.clone_files(clone) != saved["provenance"]["files"]:
        pytest.skip(f"the clone at {clone} is not the recorded commit {saved['provenance']['commit']}")
    orig = original.load(clone, params=net.params, bias_seed=saved["weights"]["deconv bias seed"])
    assert record.check(saved, record.measure(orig, net, x)) == []
