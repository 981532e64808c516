"""Architectures and weight files without torch: specs, parameter shapes, the feature extractor, the
torchvision key layout (indices read from torchvision's model definitions), .npz files and their errors,
the shipped model and checkpoints. The torch references are in ``test_models_torch.py``."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from zfcore import models
from zfcore.errors import ArgumentError, WeightsError
from zfcore.models import weights


@pytest.fixture
def fmnist_params():
    """Seeded weights for the embedded spec, with small random biases (not zeros)."""
    params = models.kaiming_params(models.FMNIST_ZF, seed=0)
    rng = np.random.default_rng(3)
    for k in params:
        if k.endswith(".bias"):
            params[k] = (0.05 * rng.standard_normal(params[k].shape)).astype(np.float32)
    return params


def test_torchvision_names_known_indices():
    vgg = models.torchvision_names("vgg16")
    assert (vgg["conv1_1"], vgg["pool1"], vgg["conv5_3"], vgg["pool5"]) == \
        ("features.0", "features.4", "features.28", "features.30")
    assert (vgg["avgpool"], vgg["fc6"], vgg["fc7"], vgg["fc8"]) == \
        ("avgpool", "classifier.0", "classifier.3", "classifier.6")
    alex = models.torchvision_names("alexnet")
    assert (alex["conv2"], alex["conv5"], alex["drop6"], alex["fc6"], alex["fc7"], alex["fc8"]) == \
        ("features.3", "features.10", "classifier.0", "classifier.1", "classifier.4", "classifier.6")


def test_features_spec_is_torchvisions_features_section():
    """VGG16's feature extractor is torchvision's ``features`` (indices 0-30: conv1_1 ... pool5, no
    avgpool); the embedded net's ends at pool5, before flatten; params are cut to the same layers."""
    vgg = models.features_spec("vgg16")
    assert len(vgg) == 31 and vgg[0][0] == "conv1_1" and vgg[-1][0] == "pool5"
    fm, params = models.features_spec("fmnist_zf", models.kaiming_params(models.FMNIST_ZF))
    assert [n for n, _, _ in fm][-1] == "pool5" and fm == models.FMNIST_ZF[:13]
    assert sorted(params) == sorted(k for k in models.param_shapes(models.FMNIST_ZF) if k[:4] == "conv")
    convs = [("r", "relu", {}), ("p", "maxpool", dict(kernel=2, stride=2, padding=0))]
    assert models.features_spec(convs) == convs          # no classifier: the whole spec


def test_param_shapes_and_kaiming_params_by_hand():
    spec = [("c", "conv", dict(in_channels=2, out_channels=3, kernel=(1, 2), stride=1, padding=0)),
            ("r", "relu", {}), ("f", "flatten", {}), ("l", "linear", dict(in_features=4, out_features=5))]
    assert models.param_shapes(spec) == {"c.weight": (3, 2, 1, 2), "c.bias": (3,), "l.weight": (5, 4),
                                         "l.bias": (5,)}
    p = models.kaiming_params(spec, seed=0)
    assert not p["c.bias"].any() and not p["l.bias"].any() and p["c.weight"].dtype == np.float32
    # first draw of default_rng(0), scaled by sqrt(2 / fan_in) with fan_in = 2 * 1 * 2
    first = np.random.default_rng(0).standard_normal(1, dtype=np.float32)[0]
    assert p["c.weight"][0, 0, 0, 0] == np.float32(first) * np.float32(np.sqrt(0.5))
    with pytest.raises(ArgumentError, match="layer 'c': kernel must be an integer or a pair"):
        models.param_shapes([("c", "conv", dict(in_channels=1, out_channels=1, kernel=(1, 2, 3)))])


def test_weight_functions_reachable_from_models():
    for name in ("load_model", "build_model", "load_weights", "save_weights", "load_npz", "save_npz",
                 "checkpoints", "load_checkpoint", "ASSETS", "torchvision_names"):
        assert getattr(models, name) is getattr(weights, name)
    assert "load_model" in dir(models)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        models.nope


def test_num_classes_and_spec_copies():
    spec = models.get_spec("fmnist_zf", 3)
    assert spec[-1][2]["out_features"] == 3 and models.FMNIST_ZF[-1][2]["out_features"] == 10
    spec = models.get_spec("vgg16")
    spec[0][2]["out_channels"] = 1  # a copy: the registry is untouched
    assert models.SPECS["vgg16"][0][2]["out_channels"] == 64
    with pytest.raises(ArgumentError, match="unknown architecture 'resnet'"):
        models.get_spec("resnet")


def test_random_build_is_seeded():
    a, b = models.build_model("fmnist_zf", seed=1), models.build_model("fmnist_zf", seed=1)
    c = models.build_model("fmnist_zf", seed=2)
    models.check_params(models.FMNIST_ZF, a.params)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["conv1.weight"], c.params["conv1.weight"])


def test_check_params_lists_every_problem(fmnist_params):
    p = dict(fmnist_params)
    del p["conv2.bias"]
    p["conv9.weight"] = np.zeros((2, 2), np.float32)
    p["fc6.weight"] = np.zeros((512, 2000), np.float32)
    with pytest.raises(WeightsError) as e:
        models.check_params(models.FMNIST_ZF, p, source="mine.npz")
    msg = str(e.value)
    assert msg.startswith("mine.npz")
    assert "missing keys: conv2.bias (64,)" in msg
    assert "unexpected keys: conv9.weight (2, 2)" in msg
    assert "fc6.weight: expected (512, 2048), found (512, 2000)" in msg


@pytest.mark.parametrize("change, words", [
    (lambda p: p.pop("fc7.bias"), ["missing", "fc7.bias"]),
    (lambda p: p.__setitem__("extra.weight", np.zeros(3)), ["unexpected", "extra.weight"]),
    (lambda p: p.__setitem__("conv1.weight", np.zeros((32, 3, 5, 5))),
     ["conv1.weight", "(32, 1, 5, 5)", "(32, 3, 5, 5)"]),
])
def test_build_model_rejects_bad_params(change, words, fmnist_params):
    change(fmnist_params)
    with pytest.raises(WeightsError) as e:
        models.build_model("fmnist_zf", weights=fmnist_params)
    assert all(w in str(e.value) for w in words)


def test_shape_mismatch_in_file_names_file_key_and_shapes(fmnist_params, tmp_path):
    fmnist_params["conv3.weight"] = fmnist_params["conv3.weight"][:, :32]
    path = models.save_npz(tmp_path / "bad.npz", fmnist_params, "fmnist_zf")
    with pytest.raises(WeightsError) as e:
        models.load_weights(path)
    assert str(path) in str(e.value) and "conv3.weight: expected (128, 64, 3, 3), found (128, 32, 3, 3)" \
        in str(e.value)


def test_corrupt_npz(tmp_path):
    path = tmp_path / "random.npz"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(WeightsError, match="random.npz: corrupt weights file"):
        models.load_weights(path)


def test_truncated_npz(fmnist_params, tmp_path):
    path = models.save_npz(tmp_path / "cut.npz", fmnist_params, "fmnist_zf")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.npz: corrupt weights file"):
        models.load_weights(path)


def test_npz_without_header_and_bare_npy(tmp_path):
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(WeightsError, match="plain.npz: not a zfcore weights file"):
        models.load_weights(tmp_path / "plain.npz")
    np.save(tmp_path / "arr.npy", np.zeros(3))
    (tmp_path / "arr.npy").rename(tmp_path / "arr.npz")
    with pytest.raises(WeightsError, match="arr.npz: not a zfcore weights file"):
        models.load_weights(tmp_path / "arr.npz")


def test_damaged_member_in_npz(fmnist_params, tmp_path):
    """A zip whose member is not a valid .npy array (as a bad copy or a hand-made file can give)."""
    path = models.save_npz(tmp_path / "w.npz", fmnist_params, "fmnist_zf")
    bad = tmp_path / "damaged.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, b"garbage" if item.filename == "conv1.weight.npy" else src.read(item))
    with pytest.raises(WeightsError, match="damaged.npz: corrupt weights file"):
        models.load_weights(bad)


def test_npz_for_another_architecture(fmnist_params, tmp_path):
    path = models.save_weights(fmnist_params, tmp_path / "fm.npz", "fmnist_zf")
    with pytest.raises(WeightsError) as e:
        models.load_weights(path, arch="zfnet")
    assert str(e.value) == f"{path}: a weights file for architecture 'fmnist_zf', not 'zfnet'"
    with pytest.raises(WeightsError, match="fm.npz: a weights file for architecture 'fmnist_zf'"):
        models.build_model("alexnet", weights=path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.npz: no such weights file"):
        models.load_weights(tmp_path / "nothere.npz")
    with pytest.raises(FileNotFoundError, match="nothere.pth: no such weights file"):
        models.build_model("vgg16", weights=tmp_path / "nothere.pth")
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(WeightsError, match="w.h5: unknown weights format"):
        models.load_weights(tmp_path / "w.h5")


def test_save_refuses_to_overwrite(fmnist_params, tmp_path):
    path = models.save_weights(fmnist_params, tmp_path / "w.npz", "fmnist_zf")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="w.npz exists"):
        models.save_weights(fmnist_params, path, "fmnist_zf")
    assert path.read_bytes() == before
    fmnist_params["fc7.bias"] = fmnist_params["fc7.bias"] + 1
    models.save_weights(fmnist_params, path, "fmnist_zf", overwrite=True)
    np.testing.assert_array_equal(models.load_weights(path)[0]["fc7.bias"], fmnist_params["fc7.bias"])


def test_save_checks_params_and_suffix(fmnist_params, tmp_path):
    with pytest.raises(WeightsError, match="fc6.weight"):
        models.save_weights({**fmnist_params, "fc6.weight": np.zeros((1, 1))}, tmp_path / "w.npz",
                            "fmnist_zf")
    with pytest.raises(WeightsError, match="ending in .npz"):
        models.save_weights(fmnist_params, tmp_path / "w.pth", "fmnist_zf")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_no_partial_file(fmnist_params, tmp_path, monkeypatch):
    """A write that dies half way (disk full) leaves neither a partial file nor the temporary; an existing
    file being replaced stays intact."""
    real = np.savez_compressed

    def dies_half_way(file, *args, **kw):
        with open(file, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        models.save_weights(fmnist_params, tmp_path / "w.npz", "fmnist_zf")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(np, "savez_compressed", real)
    path = models.save_weights(fmnist_params, tmp_path / "w.npz", "fmnist_zf")
    before = path.read_bytes()
    monkeypatch.setattr(np, "savez_compressed", dies_half_way)
    with pytest.raises(OSError):
        models.save_weights(fmnist_params, path, "fmnist_zf", overwrite=True)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


def test_load_model_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.delenv("ZFCORE_VGG16", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        models.load_model("vgg16")
    msg = str(e.value)
    assert "$ZFCORE_VGG16 (not set)" in msg
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in msg
    assert "--weights random on the command line, build_model('vgg16') in Python" in msg
    monkeypatch.setenv("ZFCORE_VGG16", str(tmp_path / "gone.pth"))
    with pytest.raises(FileNotFoundError, match="gone.pth"):
        models.load_model("vgg16")
    with pytest.raises(FileNotFoundError, match="no pretrained weights are known for 'zfnet'"):
        models.load_model("zfnet")


def test_load_model_embedded_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(weights, "ASSETS", tmp_path)
    with pytest.raises(FileNotFoundError, match="fmnist_zf.npz: the embedded model's weights are missing"):
        models.load_model()


def test_load_model_embedded_shipped():
    net = models.load_model()
    models.check_params(models.FMNIST_ZF, net.params)
    x = np.zeros((2, 1, 28, 28), np.float32)
    assert net.forward(x).output.shape == (2, 10)


def test_shipped_checkpoints():
    cps = models.checkpoints()
    epochs = [e for e, _ in cps]
    assert epochs[:6] == [1, 2, 5, 10, 20, 30]  # the feature-evolution figure's epochs (+ the last)
    for _, path in cps:
        net = models.load_checkpoint(path)
        assert net.layer_names == [n for n, _, _ in models.features_spec("fmnist_zf")]
        w = net.params["conv1.weight"]
        assert w.dtype == np.float32
        np.testing.assert_array_equal(w, w.astype(np.float16).astype(np.float32))  # float16 storage


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        models.load_checkpoint(tmp_path / "epoch_99.npz")
    other = models.save_npz(tmp_path / "vgg.npz", {}, "vgg16")
    with pytest.raises(WeightsError, match="vgg.npz: a checkpoint for architecture 'vgg16'"):
        models.load_checkpoint(other)
    bad = models.save_npz(tmp_path / "bad.npz", {"conv1.weight": np.zeros((3, 3), np.float32)}, "fmnist_zf")
    with pytest.raises(WeightsError, match="bad.npz"):
        models.load_checkpoint(bad)


def test_importing_models_does_not_import_torch():
    code = ("import sys, zfcore.models as m; m.get_spec('vgg16'); m.check_params('fmnist_zf', "
            "{k: __import__('numpy').zeros(s) for k, s in m.param_shapes(m.FMNIST_ZF).items()}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
