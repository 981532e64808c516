"""The command-line table of docs/bad-input.md: each bad input to the command line, the exit status and
the one line it prints on stderr, and that the output folder is left exactly as it was (each row is
one parametrised case here; docs/bad-input.md names them ``test_bad_input_row[<id>]``, and
tests/test_docs.py checks that it lists every case)."""
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")  # the command line draws its figures with matplotlib (extra "cli")
pytest.importorskip("PIL")

from zfcore import cli, data, models
from zfcore.cli.main import build_parser
from zfcore.data import loading

from test_cli import snapshot


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from PIL import Image
    d = tmp_path_factory.mktemp("inputs")
    x, y = data.load_dataset("test", limit=64)
    Image.fromarray((x[0, 0] * 255).astype(np.uint8)).save(d / "boot.png")
    (d / "text.png").write_text("this is not an image")
    Image.new("L", (5, 5), 128).save(d / "zz-5x5.png")     # sorted after text.png: topk --strict stops there first
    (d / "random.npz").write_bytes(np.random.default_rng(0).bytes(4000))
    (d / "afile").write_text("a file, not a folder")
    (d / "empty").mkdir()
    (d / "noimages").mkdir()
    (d / "noimages" / "readme.txt").write_text("no images here")
    models.save_weights(models.load_weights(models.default_weights_path("fmnist_zf"))[0], d / "fm.npz",
                        "fmnist_zf")
    nan = dict(models.load_weights(models.default_weights_path("fmnist_zf"))[0])
    nan["conv3.weight"] = nan["conv3.weight"].copy()
    nan["conv3.weight"][0, 0, 0, 0] = np.nan
    models.save_weights(nan, d / "nan.npz", "fmnist_zf")       # saved as given; refused when loaded

    class Code:                                                   # a pickle that runs print() when loaded
        def __reduce__(self):
            return (print, ("unpickled: the file's code ran",))
    (d / "code.pth").write_bytes(pickle.dumps({"conv1.weight": Code()}, protocol=2))
    try:                                                          # 4 bytes stored, 1.6 GB as float32
        import torch
        fm = {k: torch.from_numpy(v) for k, v in models.load_weights(d / "fm.npz")[0].items()}
        torch.save(dict(fm, **{"conv1.weight": torch.zeros(1).expand(20000, 20000)}), d / "expanded.pth")
    except ImportError:
        pass
    tiny = d / "tiny"       # a tiny 'training split' (64 shipped test images)
    tiny.mkdir()
    imgs = (x[:, 0] * 255).round().astype(np.uint8)
    for split in ("train", "test"):
        data.write_idx(tiny / (loading._FILES[split][0] + ".gz"), imgs)
        data.write_idx(tiny / (loading._FILES[split][1] + ".gz"), y.astype(np.uint8))
    return d


# (id, argv with {in} = input folder and {out} = the output folder, expected message)
ROWS = [
    ("unknown-layer", "project --test-index 0 --layer conv55", r"unknown layer 'conv55'; did you mean 'conv5'"),
    ("weights-with-nan", "classify --test-index 0 --weights {in}/nan.npz", r"nan.npz: NaN or infinite values in conv3.weight"),
    ("occlusion-fill-nan", "occlusion --test-index 0 --fill nan", r"the occluder's fill must be a finite number, got nan"),
    ("report-out-holds-other-files", "report --only 00",
     r"--out .*out holds files the report builder did not write \(keep.txt\); .* or pass --force"),
    ("report-out-is-a-file", "report --only 00 --out {in}/afile", r"--out .*afile is a file, not a folder"),
    ("feature-out-of-range", "project --test-index 0 --layer conv5 --feature 999",
     r"feature of layer 'conv5' 999 out of range 0..127"),
    ("feature-negative", "project --test-index 0 --layer conv5 --feature -1",
     r"feature of layer 'conv5' -1 out of range 0..127"),
    ("unknown-rule", "project --test-index 0 --layer conv5 --rule deconv", r"unknown rule 'deconv'; did you mean 'deconvnet'"),
    ("missing-image", "classify {in}/nothere.png", r"nothere.png: no such file"),
    ("not-an-image", "classify {in}/text.png", r"text.png: not a readable image"),
    ("image-is-a-folder", "classify {in}/empty", r"empty: is a folder, not an image file"),
    ("image-far-too-small", "classify {in}/zz-5x5.png", r"zz-5x5.png: image of 5x5 pixels is too small for 28x28"),
    ("max-upscale-below-one", "classify {in}/zz-5x5.png --max-upscale 0.5",
     r"--max-upscale must be a number >= 1, or 0 for no limit, got 0.5"),
    ("topk-max-upscale-negative", "topk --layer conv1 --images {in} --max-upscale -2",
     r"--max-upscale must be a number >= 1, or 0 for no limit, got -2"),
    ("test-index-out-of-range", "classify --test-index 10000", r"--test-index 10000: out of range 0..9999"),
    ("no-input", "classify", r"no input: give image files or --test-index N"),
    ("unknown-model", "classify --test-index 0 --model vgg61", r"--model 'vgg61': unknown; did you mean 'vgg16'"),
    ("missing-weights", "classify --test-index 0 --weights {in}/nothere.npz", r"nothere.npz: no such weights file"),
    ("corrupt-weights", "classify --test-index 0 --weights {in}/random.npz", r"random.npz: corrupt weights file"),
    ("weights-for-another-model", "classify --test-index 0 --model alexnet --weights {in}/fm.npz",
     r"fm.npz: a weights file for architecture 'fmnist_zf', not 'alexnet'"),
    ("model-without-known-weights", "classify --model zfnet {in}/boot.png",
     r"no pretrained weights are known for 'zfnet'; give a weights file with --weights FILE .*--weights random"),
    ("output-exists", "classify --test-index 0", r"classify.json exists; pass --force to replace it"),
    ("out-is-a-file", "classify --test-index 0 --out {in}/afile", r"--out .*afile: is a file, not a folder"),
    ("missing-out", "classify --test-index 0 --out=", r"--out FOLDER is required"),
    ("out-parent-is-a-file", "topk --layer conv1 conv3 --k 1 --limit 5 --out {in}/afile/sub",
     r"--out .*afile/sub: cannot write there \(a parent of it is a file\)"),
    ("topk-out-within-images", "topk --layer conv1 --k 1 --images {in} --out {in}/top",
     r"--out .*top: within the --images folder .*, which is searched recursively, so this run's topk.png "
     r"would be read as an input by the next; give an --out outside it"),
    ("topk-k-zero", "topk --layer conv5 --k 0", r"--k must be >= 1, got 0"),
    ("topk-k-over-set", "topk --layer conv5 --k 6 --limit 5", r"--k must be in 1..5, got 6"),
    ("topk-no-images", "topk --layer conv5 --images {in}/noimages", r"noimages: holds no image files"),
    ("topk-not-spatial", "topk --layer fc6 --k 1 --limit 5", r"layer 'fc6' is not spatial"),
    ("topk-missing-folder", "topk --layer conv5 --images {in}/nothere", r"--images .*nothere: not a folder"),
    ("topk-unreadable-file", "topk --layer conv1 conv5 --k 1 --images {in} --strict", r"text.png: not a readable image"),
    ("topk-unknown-second-layer", "topk --layer conv1 conv55", r"unknown layer 'conv55'; did you mean 'conv5'"),
    ("topk-batch-size-zero", "topk --layer conv5 --batch-size 0", r"--batch-size must be >= 1, got 0"),
    ("topk-workers-zero", "topk --layer conv5 --workers 0", r"--workers must be in 1..256, got 0"),
    ("topk-threads-zero", "topk --layer conv5 --threads 0", r"--threads must be in 1..1024, got 0"),
    ("topk-threads-and-workers", "topk --layer conv5 --threads 2 --workers 2",
     r"--threads is for the single-process path: each Dask worker runs one thread"),
    ("topk-workers-and-scheduler", "topk --layer conv5 --workers 2 --scheduler tcp://127.0.0.1:8786",
     r"give --workers N \(a local cluster\) or --scheduler ADDRESS, not both"),
    ("occlusion-target-out-of-range", "occlusion --test-index 0 --target 10", r"target class 10 out of range 0..9"),
    ("occlusion-target-negative", "occlusion --test-index 0 --target -1", r"target class -1 out of range 0..9"),
    ("occlusion-size-zero", "occlusion --test-index 0 --size 0", r"--size must be in 1..28, got 0"),
    ("occlusion-stride-past-the-image", "occlusion --test-index 0 --stride 29", r"--stride must be in 1..28, got 29"),
    ("occlusion-batch-size-zero", "occlusion --test-index 0 --batch-size 0", r"--batch-size must be >= 1, got 0"),
    ("occlusion-two-images", "occlusion --test-index 0 1", r"occlusion takes one image, got 2"),
    ("not-an-integer", "topk --layer conv5 --k abc", r"argument --k: invalid int value: 'abc'"),
    ("train-lr-nan", "train --lr nan --data {in}/tiny", r"learning rate must be a finite number > 0, got nan"),
    ("train-lr-zero", "train --lr 0 --data {in}/tiny", r"learning rate must be a finite number > 0, got 0.0"),
    ("train-batch-negative", "train --batch-size -1 --data {in}/tiny", r"batch size must be a positive integer, got -1"),
    ("train-batch-zero", "train --batch-size 0 --data {in}/tiny", r"batch size must be a positive integer, got 0"),
    ("train-epochs-negative", "train --epochs -2 --data {in}/tiny", r"epochs must be a positive integer, got -2"),
    ("train-epochs-zero", "train --epochs 0 --data {in}/tiny", r"epochs must be a positive integer, got 0"),
    ("train-subset-zero", "train --subset 0 --data {in}/tiny", r"subset must be a positive integer, got 0"),
    ("train-device", "train --device foo --data {in}/tiny", r"device must be auto, cpu, cuda or cuda:N, not 'foo'"),
    ("train-threads", "train --threads -1 --data {in}/tiny", r"threads must be a positive integer, got -1"),
]
TORCH_ROWS = [
    ("pth-with-code", "classify --test-index 0 --weights {in}/code.pth",
     r"code.pth: refused: not a plain state dict \(the file's pickle names other objects than tensors"),
    ("pth-expanded-tensor", "classify --test-index 0 --weights {in}/expanded.pth",
     r"expanded.pth: weights do not fit the architecture: shape mismatch for conv1.weight: "
     r"expected \(32, 1, 5, 5\), found \(20000, 20000\)"),
    ("train-out-is-a-file", "train --epochs 1 --data {in}/tiny --out {in}/afile", r"--out .*afile: is a file"),
    ("train-out-unwritable", "train --epochs 1 --data {in}/tiny --out {in}/afile/sub", r"--out .*sub: cannot write there"),
    ("train-out-foreign-files", "train --epochs 1 --data {in}/tiny",
     r"holds keep.txt, which is not a training run's file"),
    ("train-missing-data", "train --epochs 1 --data {in}/empty --out {in}/newrun2", r"--data FOLDER"),
]


def check_row(argv, want, out, capsys, files):
    import re
    before = snapshot(out)
    argv = [a.replace("{in}", str(files)) for a in argv.split()]
    if not any(a.startswith("--out") for a in argv):
        argv += ["--out", str(out)]
    rc = cli.main(argv)
    stdout, err = capsys.readouterr()
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(want, lines[0]), lines[0]
    assert snapshot(out) == before                         # the output folder is unchanged
    return lines[0]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_row(row, out, capsys, files):
    name, argv, want = row
    if name == "output-exists":
        (out / "classify.json").write_text('{"an": "earlier summary"}')
    try:
        check_row(argv, want, out, capsys, files)
    except SystemExit as e:                                  # argparse's own errors
        _, err = capsys.readouterr()
        assert e.code == 2 and len(err.strip().splitlines()) == 1 and __import__("re").search(want, err), err


@pytest.mark.parametrize("row", TORCH_ROWS, ids=[r[0] for r in TORCH_ROWS])
def test_bad_input_row_torch(row, out, capsys, files, monkeypatch, tmp_path):
    pytest.importorskip("torch")
    monkeypatch.delenv("ZFCORE_DATA", raising=False)
    monkeypatch.setattr(loading, "DEBIAN", tmp_path / "none")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    check_row(row[1], row[2], out, capsys, files)


def test_train_without_torch(out, capsys, files, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)          # import torch -> ImportError
    line = check_row("train --epochs 1 --data {in}/tiny --out {in}/newrun", r"training needs torch, which "
                     r"is not installed: pip install 'zfcore\[torch\]'", out, capsys, files)
    assert not (files / "newrun").exists() and "ModuleNotFoundError" not in line


def test_every_error_is_one_line_with_the_command(out, capsys, files):
    line = check_row("occlusion --test-index 0 --layer conv5 --feature 128", r"^zfcore occlusion: error: ",
                     out, capsys, files)
    assert "128 out of range 0..127" in line


def test_train_default_out_is_in_the_working_directory(tmp_path, monkeypatch):
    """`zfcore train` without --out writes ./zfcore-train/fmnist_zf, never the installed package's
    assets (those are written only with an explicit --out zfcore/assets/models)."""
    from zfcore.torch import train
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["train"])
    out = Path(args.out).absolute().resolve()
    assert out == (tmp_path / "zfcore-train" / "fmnist_zf").resolve() == train.default_out("fmnist_zf").resolve()
    shipped = Path(models.default_weights_path("fmnist_zf")).parent.resolve()
    assert out != shipped and shipped not in out.parents
    assert not math.isnan(args.lr)


# --- training runs: nothing mixed, nothing half-written ------------------------------------------------
TRAIN = "train --data {in}/tiny --batch-size 32 --threads 2 --no-batchnorm --precision fp32 --quiet"


def _train(argv, files, capsys):
    rc = cli.main([a.replace("{in}", str(files)) for a in argv.split()])
    return rc, capsys.readouterr()[1]


@pytest.mark.slow
def test_train_nonfinite_loss_stops_with_an_error(files, capsys, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "run"
    rc, err = _train(f"{TRAIN} --epochs 2 --lr 1e30 --out {out}", files, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "epoch 1: the training loss became nan" in err or "became inf" in err, err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []   # no staging folder left


@pytest.mark.slow
def test_train_rerun_replaces_the_whole_run(files, capsys, tmp_path):
    """--force with fewer epochs: the older run's checkpoints are gone, not mixed with the new ones."""
    pytest.importorskip("torch")
    out = tmp_path / "run"
    assert _train(f"{TRAIN} --epochs 2 --out {out}", files, capsys)[0] == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_01.npz", "epoch_02.npz"]
    rc, err = _train(f"{TRAIN} --epochs 1 --out {out}", files, capsys)
    assert rc == 2 and "pass --force" in err
    assert _train(f"{TRAIN} --epochs 1 --out {out} --force", files, capsys)[0] == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_01.npz"]
    import json
    assert len(json.loads((out / "history.json").read_text())["epochs"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.slow
def test_train_killed_midway_leaves_out_as_it_was(files, capsys, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from zfcore.torch import train
    out = tmp_path / "run"
    out.mkdir()
    (out / "history.json").write_text('{"an": "earlier run"}')
    before = snapshot(out)
    calls = []

    def killed(*a, **k):          # the process is interrupted after the first epoch's checkpoint
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    real = train._record
    monkeypatch.setattr(train, "_record", killed)
    rc, err = _train(f"{TRAIN} --epochs 3 --out {out} --force", files, capsys)
    assert rc == 130 and "interrupted" in err and calls == [1, 1]
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
