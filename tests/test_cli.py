"""The command line: every subcommand on the shipped test set and on a PNG written here;
the same seed gives byte-identical summaries and identical arrays; bad input gives one line on stderr,
exit status 2, and leaves the output folder unchanged (docs/bad-input.md lists these)."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")  # the command line draws its figures with matplotlib (extra "cli")
pytest.importorskip("PIL")

from zfcore import cli, data, models

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    """A shipped test image (a pullover) written as an 8-bit grey PNG."""
    from PIL import Image
    x, _ = data.load_dataset("test", limit=2)
    p = tmp_path_factory.mktemp("img") / "pullover.png"
    Image.fromarray((x[1, 0] * 255).round().astype(np.uint8)).save(p)
    return p


@pytest.fixture(scope="module")
def fmnist_net():
    """The shipped model through the Python API: what the CLI's numbers must equal (the API's own
    correctness is checked against PyTorch in test_network.py / test_projection_torch.py)."""
    return models.load_model()


def run(argv, capsys):
    rc = cli.main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return rc, out, err


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its content hash (empty for a missing folder)."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {".": hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


# --- each command on the shipped test set and on a PNG ------------------------------------------------
def test_classify(tmp_path, png, capsys):
    rc, out, err = run(["classify", "--test-index", 0, 1, "--out", tmp_path / "a", "--quiet"], capsys)
    assert rc == 0 and err == ""
    s = json.loads((tmp_path / "a" / "classify.json").read_text())
    labels = [d["label"] for d in s["inputs"]]
    assert [r["predicted"] for r in s["results"]] == labels == [9, 2]     # the shipped labels
    assert (tmp_path / "a" / "classify.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc, out, _ = run(["classify", png, "--out", tmp_path / "b"], capsys)
    s = json.loads((tmp_path / "b" / "classify.json").read_text())
    assert rc == 0 and s["results"][0]["top"][0]["name"] == "Pullover" and "Pullover" in out
    probs = [t["prob"] for t in s["results"][0]["top"]]
    assert probs == sorted(probs, reverse=True) and s["model"]["arch"] == "fmnist_zf"
    # an RGB JPEG of another size: converted to grey and resized to 28x28 like the PNG
    from PIL import Image
    with Image.open(png) as im:
        im.convert("RGB").resize((56, 56)).save(tmp_path / "pullover.jpg", quality=95)
    rc, _, _ = run(["classify", tmp_path / "pullover.jpg", "--out", tmp_path / "c", "--quiet"], capsys)
    s = json.loads((tmp_path / "c" / "classify.json").read_text())
    assert rc == 0 and s["results"][0]["top"][0]["name"] == "Pullover"


def test_project(tmp_path, png, capsys, fmnist_net):
    rc, _, _ = run(["project", "--test-index", 0, "--layer", "conv3", "--out", tmp_path / "a", "--quiet"], capsys)
    assert rc == 0
    s = json.loads((tmp_path / "a" / "project.json").read_text())
    r = s["results"][0]
    # independent of the CLI: the strongest conv3 map of test image 0, and its projection
    x, _ = data.load_dataset("test", limit=1)
    rec = fmnist_net.forward(x, upto="conv3")
    act = rec["conv3"][0]
    assert r["feature"] == int(np.argmax(act.reshape(act.shape[0], -1).max(axis=1)))
    ref = rec.project("conv3", r["feature"])
    with np.load(tmp_path / "a" / "project.npz") as z:
        np.testing.assert_array_equal(z["00-test-0"], ref)
    assert r["receptive_field_box"] == list(fmnist_net.input_box("conv3", tuple(r["position"])))
    assert (tmp_path / "a" / "00-test-0.png").stat().st_size > 1000
    rc, _, _ = run(["project", png, "--layer", "conv5", "--feature", 7, "--rule", "guided",
                    "--out", tmp_path / "b", "--quiet"], capsys)
    s = json.loads((tmp_path / "b" / "project.json").read_text())
    assert rc == 0 and s["results"][0]["feature"] == 7 and s["rule"] == "guided"
    assert (tmp_path / "b" / "00-pullover.png").is_file()
    # two files of one name in two folders stay two inputs in the summary
    import shutil
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        shutil.copy(png, tmp_path / d / "x.png")
    rc, _, _ = run(["project", tmp_path / "d1" / "x.png", tmp_path / "d2" / "x.png", "--layer", "conv5",
                    "--out", tmp_path / "c", "--quiet"], capsys)
    s = json.loads((tmp_path / "c" / "project.json").read_text())
    assert rc == 0 and [r["input"] for r in s["results"]] == [str(tmp_path / d / "x.png") for d in ("d1", "d2")]


def test_topk(tmp_path, png, capsys, fmnist_net):
    rc, _, _ = run(["topk", "--layer", "conv2", "--k", 2, "--features", 3, "--limit", 50,
                    "--out", tmp_path / "a", "--quiet"], capsys)
    assert rc == 0
    s = json.loads((tmp_path / "a" / "topk.json").read_text())
    x, _ = data.load_dataset("test", limit=50)
    m = fmnist_net.forward(x, upto="conv2")["conv2"][:, 3].reshape(50, -1).max(axis=1)
    assert s["results"][0]["images"] == list(np.argsort(-m, kind="stable")[:2])
    np.testing.assert_allclose(s["results"][0]["values"], np.sort(m)[::-1][:2], rtol=1e-6)
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / png.name).write_bytes(png.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    rc, _, _ = run(["topk", "--layer", "conv1", "--k", 1, "--features", 0, "--images", folder,
                    "--out", tmp_path / "b", "--quiet"], capsys)
    s = json.loads((tmp_path / "b" / "topk.json").read_text())
    assert rc == 0 and s["inputs"]["files"] == ["pullover.png"] and s["results"][0]["images"] == [0]


def _hand_top(net, x, layer, feature, k):
    """Images and values of a feature's top k, by hand from the forward pass (argsort, stable)."""
    m = net.forward(x, upto=layer)[layer][:, feature].reshape(len(x), -1).max(axis=1)
    order = np.argsort(-m, kind="stable")[:k]
    return order.tolist(), m[order]


def test_topk_several_layers_one_scan(tmp_path, capsys, fmnist_net):
    rc, _, _ = run(["topk", "--layer", "conv1", "conv4", "--k", 3, "--features", 0, 5, "--limit", 40,
                    "--batch-size", 7, "--out", tmp_path, "--quiet"], capsys)
    assert rc == 0
    s = json.loads((tmp_path / "topk.json").read_text())
    x, _ = data.load_dataset("test", limit=40)
    assert s["layer"] == ["conv1", "conv4"] and s["inputs"]["count"] == 40
    assert [(r["layer"], r["feature"]) for r in s["results"]] == [("conv1", 0), ("conv1", 5), ("conv4", 0), ("conv4", 5)]
    for r in s["results"]:
        images, values = _hand_top(fmnist_net, x, r["layer"], r["feature"], 3)
        assert r["images"] == images
        np.testing.assert_allclose(r["values"], values, rtol=1e-6)
    with np.load(tmp_path / "topk.npz") as z:
        assert z["conv4.projections"].shape == (2, 3, 1, 28, 28) and z["conv1.images"].tolist() == \
            [r["images"] for r in s["results"][:2]]
        assert z["conv4.patches"].shape[:2] == (2, 3) and z["conv1.boxes"].shape == (2, 3, 4)


def _pngs(root, x, names):
    from PIL import Image
    for a, name in zip(x, names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((a[0] * 255).round().astype(np.uint8)).save(root / name)


def test_topk_recursive_folder_and_image_folder(tmp_path, capsys, fmnist_net):
    x, _ = data.load_dataset("test", limit=12)
    names = ["b/2.png", "a/1.png", "top.png", "b/c/3.png"] * 3
    names = [f"{i:02d}-{n}" if "/" not in n else n.replace("/", f"/{i:02d}", 1) for i, n in enumerate(names)]
    _pngs(tmp_path / "flat", x, names)
    rc, _, _ = run(["topk", "--layer", "conv2", "--k", 2, "--features", 1, "--images", tmp_path / "flat",
                    "--out", tmp_path / "o1", "--quiet"], capsys)
    s = json.loads((tmp_path / "o1" / "topk.json").read_text())
    assert rc == 0 and s["inputs"]["layout"] == "folder" and s["inputs"]["files"] == sorted(names)
    order = [names.index(f) for f in sorted(names)]               # file id -> shipped image
    images, _ = _hand_top(fmnist_net, x[order], "conv2", 1, 2)
    assert s["results"][0]["images"] == images
    assert s["results"][0]["files"] == [sorted(names)[i] for i in images]
    classes = ["bag", "boot", "coat"]
    _pngs(tmp_path / "classes", x, [f"{classes[i % 3]}/{i:02d}.png" for i in range(12)])
    rc, _, _ = run(["topk", "--layer", "conv1", "--k", 2, "--features", 3, "--images", tmp_path / "classes",
                    "--out", tmp_path / "o2", "--quiet"], capsys)
    s = json.loads((tmp_path / "o2" / "topk.json").read_text())
    assert rc == 0 and s["inputs"]["layout"] == "imagefolder" and s["inputs"]["classes"] == classes
    r = s["results"][0]
    assert r["labels"] == [f.split("/")[0] for f in r["files"]]
    order = [int(f.split("/")[1][:2]) for f in s["inputs"]["files"]]
    assert r["images"] == _hand_top(fmnist_net, x[order], "conv1", 3, 2)[0]


def test_topk_on_dask_workers_equals_one_process(tmp_path, capsys):
    pytest.importorskip("distributed")
    argv = ["topk", "--layer", "conv1", "--k", 3, "--features", 0, 7, "--limit", 60, "--batch-size", 16, "--quiet"]
    assert run(argv + ["--out", tmp_path / "a"], capsys)[0] == 0
    assert run(argv + ["--workers", 2, "--out", tmp_path / "b"], capsys)[0] == 0
    a, b = (json.loads((tmp_path / d / "topk.json").read_text()) for d in "ab")
    assert [r["images"] for r in a["results"]] == [r["images"] for r in b["results"]]
    # the workers run one BLAS thread, this process maybe more: float32 sums may round differently
    np.testing.assert_allclose([r["values"] for r in a["results"]], [r["values"] for r in b["results"]], rtol=1e-6)


def test_topk_workers_without_dask(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    rc, _, err = run(["topk", "--layer", "conv1", "--workers", 2, "--limit", 20, "--out", tmp_path], capsys)
    assert rc == 2 and "pip install 'zfcore[dask]'" in err and not tmp_path.joinpath("topk.json").exists()
    assert run(["topk", "--layer", "conv1", "--limit", 20, "--out", tmp_path, "--quiet"], capsys)[0] == 0


def test_occlusion(tmp_path, png, capsys):
    rc, _, _ = run(["occlusion", "--test-index", 0, "--size", 8, "--stride", 4, "--out", tmp_path / "a",
                    "--quiet"], capsys)
    s = json.loads((tmp_path / "a" / "occlusion.json").read_text())
    r = s["results"][0]
    assert rc == 0 and r["target"] == 9 and r["grid"] == [6, 6] and r["prob_min"] <= r["prob_unoccluded"]
    rc, _, _ = run(["occlusion", png, "--size", 8, "--stride", 4, "--layer", "conv5", "--feature", 2,
                    "--target", 2, "--out", tmp_path / "b", "--quiet"], capsys)
    s = json.loads((tmp_path / "b" / "occlusion.json").read_text())
    assert rc == 0 and s["feature"] == 2 and s["results"][0]["target_name"] == "Pullover"
    assert (tmp_path / "b" / "occlusion.png").is_file()


def test_a_classifier_of_another_width_gets_class_numbers(tmp_path, capsys):
    """Weights whose classifier has 20 outputs (another task on the embedded architecture): every class is
    "class i" (Fashion-MNIST's names only fit its ten), in the summary and on stdout, for classify and
    occlusion."""
    params, _ = models.load_weights(models.default_weights_path("fmnist_zf"))
    params = dict(params)
    rng = np.random.default_rng(0)
    params["fc7.weight"] = rng.standard_normal((20, params["fc7.weight"].shape[1])).astype(np.float32)
    params["fc7.bias"] = np.zeros(20, np.float32)
    params["fc7.bias"][17] = 50.0                              # class 17 wins: past the ten names
    models.save_weights(params, tmp_path / "w20.npz", "fmnist_zf")
    rc, out, _ = run(["classify", "--test-index", 0, "--weights", tmp_path / "w20.npz", "--out",
                      tmp_path / "a"], capsys)
    r = json.loads((tmp_path / "a" / "classify.json").read_text())["results"][0]
    assert rc == 0 and r["predicted"] == 17 and r["top"][0]["name"] == "class 17" and "class 17" in out
    assert all(t["name"] == f"class {t['class']}" for t in r["top"])
    rc, _, _ = run(["occlusion", "--test-index", 0, "--size", 14, "--stride", 14, "--weights",
                    tmp_path / "w20.npz", "--out", tmp_path / "b", "--quiet"], capsys)
    r = json.loads((tmp_path / "b" / "occlusion.json").read_text())["results"][0]
    assert rc == 0 and r["target"] == 17 and r["target_name"] == "class 17"


# --- same seed, same outputs ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv,files", [
    (["project", "--test-index", 3, "--layer", "conv4"], ["project.json", "00-test-3.png"]),
    (["topk", "--layer", "conv1", "--k", 2, "--features", 0, 1, "--limit", 20], ["topk.json", "topk.png"]),
    (["occlusion", "--test-index", 3, "--size", 10, "--stride", 6], ["occlusion.json", "occlusion.png"]),
    (["classify", "--test-index", 3, 4], ["classify.json"]),
])
def test_same_seed_same_outputs(tmp_path, capsys, argv, files):
    for d in ("a", "b"):
        assert run(argv + ["--seed", 5, "--quiet", "--out", tmp_path / d], capsys)[0] == 0
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    for npz in (tmp_path / "a").glob("*.npz"):
        with np.load(npz) as za, np.load(tmp_path / "b" / npz.name) as zb:
            assert za.files == zb.files
            for k in za.files:
                np.testing.assert_array_equal(za[k], zb[k])


# --- options ----------------------------------------------------------------------------------------------
def test_version_help_and_module_entry():
    out = subprocess.run([sys.executable, "-m", "zfcore", "--version"], capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "zfcore 0.1.0"
    h = subprocess.run([sys.executable, "-m", "zfcore", "topk", "--help"], capture_output=True, text=True,
                       cwd=REPO).stdout
    assert "(default: 9)" in h and "(default: deconvnet)" in h and "--force" in h
    h = subprocess.run([sys.executable, "-m", "zfcore", "--help"], capture_output=True, text=True, cwd=REPO).stdout
    for c in ("classify", "project", "topk", "occlusion", "train", "report"):
        assert c in h


def test_force_replaces(tmp_path, capsys):
    argv = ["classify", "--test-index", 0, "--out", tmp_path, "--quiet"]
    assert run(argv, capsys)[0] == 0
    (tmp_path / "classify.json").write_text("old")
    assert run(argv + ["--force"], capsys)[0] == 0
    assert json.loads((tmp_path / "classify.json").read_text())["command"] == "classify"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classify.json", "classify.png"]  # no temporaries


def test_debug_shows_the_exception(tmp_path):
    with pytest.raises(ValueError, match="unknown layer"):
        cli.main(["project", "--test-index", "0", "--layer", "conv9", "--out", str(tmp_path), "--debug"])


def test_report_without_notebooks(tmp_path, capsys, monkeypatch):
    from zfcore.cli import commands as cli_commands
    monkeypatch.setattr(cli_commands, "SOURCE_ROOT", tmp_path)          # as from an installed wheel
    rc, _, err = run(["report"], capsys)
    assert rc == 2 and "not part of this installation" in err and "source checkout" in err


def test_failed_write_removes_the_new_files(tmp_path, capsys, monkeypatch):
    """A write failing half way through a command's outputs (disk full) leaves no new file behind."""
    from zfcore import _io
    real = _io._put

    def full(tmp, data):
        if "classify.png" in tmp:
            raise OSError(28, "No space left on device")
        real(tmp, data)

    monkeypatch.setattr(_io, "_put", full)                     # the PNG comes after the JSON
    rc, _, err = run(["classify", "--test-index", 0, "--out", tmp_path, "--quiet"], capsys)
    assert rc == 2 and "No space left on device" in err and list(tmp_path.iterdir()) == []


def test_json_is_strict_nan_results_refused_before_anything_is_written(tmp_path):
    from zfcore._io import write_json
    from zfcore.cli.common import Outputs
    from zfcore.errors import ZfcoreError

    with pytest.raises(ValueError):
        write_json(tmp_path / "a.json", {"x": float("nan")})
    assert not (tmp_path / "a.json").exists()
    out = Outputs(tmp_path / "o", False, ["r.json"])
    with pytest.raises(ZfcoreError, match="r.json: the results hold NaN or infinite values"):
        out.add("r.json", {"prob": float("inf")})
    assert not (tmp_path / "o" / "r.json").exists()
