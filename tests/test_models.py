"""Architectures and weights: specs against torch's own models, key mapping, weight files and their errors.

References are independent of zfcore's arithmetic: torchvision's VGG16 / AlexNet (their state dicts and
forward passes), and ``train.torch_model`` (the PyTorch mirror of a spec) for map sizes and forwards.
torch is imported here freely; ``zfcore.models`` itself must not import it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from zfcore import models  # noqa: E402
from zfcore import train as ztrain  # noqa: E402

RTOL = 1e-5  # max |zfcore - torch| / max |torch| for float32 forwards


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def perturb_biases(model, seed=0):
    """torchvision starts biases at zero, which would hide a bias mix-up: give them small random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def meta_model(fn, **kw):
    """A torchvision model on the meta device: shapes and keys without allocating or initialising."""
    with torch.device("meta"):
        return fn(weights=None, **kw)


@pytest.fixture(scope="module")
def network():
    from zfcore import network

    return network


@pytest.fixture(scope="module")
def image224():
    return np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)


@pytest.fixture(scope="module")
def tv_vgg16():
    torch.manual_seed(0)
    return perturb_biases(torchvision.models.vgg16(weights=None), 1).eval()


@pytest.fixture(scope="module")
def tv_alexnet():
    torch.manual_seed(0)
    return perturb_biases(torchvision.models.alexnet(weights=None), 2).eval()


@pytest.fixture(scope="module")
def alexnet_pth(tv_alexnet, tmp_path_factory):
    """torchvision's AlexNet state dict saved as a .pth file, as torchvision's hub cache holds it."""
    path = tmp_path_factory.mktemp("tv") / models.TORCHVISION_FILES["alexnet"]
    torch.save(tv_alexnet.state_dict(), path)
    return path


@pytest.fixture
def fmnist_params():
    torch.manual_seed(0)
    return ztrain.state_to_numpy(perturb_biases(ztrain.torch_model(models.FMNIST_ZF), 3))


def torch_forward(model, x):
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


# ------------------------------------------------------------------------------------------------
# specs

@pytest.mark.parametrize("arch, fn", [("vgg16", torchvision.models.vgg16),
                                      ("alexnet", torchvision.models.alexnet)])
@pytest.mark.parametrize("num_classes", [1000, 10])
def test_torchvision_state_dict_fits_spec(arch, fn, num_classes):
    state = {k: np.broadcast_to(np.float32(0), v.shape)  # shapes of torch's own model, no data
             for k, v in meta_model(fn, num_classes=num_classes).state_dict().items()}
    params = models.torchvision_to_zfcore(arch, state)
    models.check_params(models.get_spec(arch, num_classes), params, source=f"torchvision {arch}")
    assert len(params) == len(state)  # every torchvision tensor has a zfcore name
    back = models.zfcore_to_torchvision(arch, params)
    assert list(back) == list(state)


def test_torchvision_names_known_indices():
    vgg = models.torchvision_names("vgg16")
    assert (vgg["conv1_1"], vgg["pool1"], vgg["conv5_3"], vgg["pool5"]) == \
        ("features.0", "features.4", "features.28", "features.30")
    assert (vgg["avgpool"], vgg["fc6"], vgg["fc7"], vgg["fc8"]) == \
        ("avgpool", "classifier.0", "classifier.3", "classifier.6")
    alex = models.torchvision_names("alexnet")
    assert (alex["conv2"], alex["conv5"], alex["drop6"], alex["fc6"], alex["fc7"], alex["fc8"]) == \
        ("features.3", "features.10", "classifier.0", "classifier.1", "classifier.4", "classifier.6")


@pytest.mark.parametrize("arch", list(models.SPECS))
def test_torch_mirror_has_spec_parameters(arch):
    with torch.device("meta"):
        state = ztrain.torch_model(models.SPECS[arch]).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == models.param_shapes(models.SPECS[arch])


def test_zfnet_map_sizes_match_the_paper():
    """Zeiler & Fergus 2014, Fig. 3: 224 -> conv1 110 -> pool1 55 -> conv2 26 -> pool2 13 -> conv3-5 13
    -> pool5 6, measured on torch's mirror of the spec (not zfcore's size arithmetic)."""
    spec = models.zfnet_spec()
    model = ztrain.torch_model(spec).eval()
    sizes = {}
    for name, mod in model.named_children():
        mod.register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape)))
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    layers = ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"]
    assert [sizes[n][2] for n in layers] == [110, 55, 26, 13, 13, 13, 13, 6]
    assert all(sizes[n][2] == sizes[n][3] for n in layers)
    assert [sizes[n][1] for n in ["conv1", "conv2", "conv3", "conv4", "conv5"]] == [96, 256, 384, 384, 256]
    assert sizes["fc6"] == (1, 4096) and sizes["fc7"] == (1, 4096) and sizes["fc8"] == (1, 1000)
    kinds = [k for _, k, _ in spec]
    assert kinds.count("lrn") == 2 and kinds.count("dropout") == 2


def test_num_classes_and_spec_copies():
    spec = models.get_spec("fmnist_zf", 3)
    assert spec[-1][2]["out_features"] == 3 and models.FMNIST_ZF[-1][2]["out_features"] == 10
    spec = models.get_spec("vgg16")
    spec[0][2]["out_channels"] = 1  # a copy: the registry is untouched
    assert models.SPECS["vgg16"][0][2]["out_channels"] == 64
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        models.get_spec("resnet")


# ------------------------------------------------------------------------------------------------
# forwards: zfcore with imported weights against torch

def test_vgg16_forward_equals_torchvision(network, tv_vgg16, image224):
    params = models.torchvision_to_zfcore("vgg16", tv_vgg16.state_dict())
    net = models.build_model("vgg16", weights=params)
    assert rel_err(net.forward(image224), torch_forward(tv_vgg16, image224)) <= RTOL


def test_alexnet_forward_equals_torchvision(network, tv_alexnet, image224):
    params = models.torchvision_to_zfcore("alexnet", tv_alexnet.state_dict())
    net = models.build_model("alexnet", weights=params)
    assert rel_err(net.forward(image224), torch_forward(tv_alexnet, image224)) <= RTOL


def test_zfnet_forward_equals_torch_mirror(network, image224):
    """Also checks zfcore's LRN against torch's LocalResponseNorm (it changes this output by ~5%)."""
    torch.manual_seed(0)
    model = perturb_biases(ztrain.torch_model(models.zfnet_spec()), 4).eval()
    net = models.build_model("zfnet", weights=ztrain.state_to_numpy(model))
    assert rel_err(net.forward(image224), torch_forward(model, image224)) <= RTOL


def test_fmnist_forward_equals_torch_mirror_and_npz_round_trip(network, fmnist_params, tmp_path):
    x = np.random.default_rng(1).random((8, 1, 28, 28), dtype=np.float32)
    model = ztrain.torch_model(models.FMNIST_ZF)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in fmnist_params.items()})
    ref = torch_forward(model, x)
    net = models.build_model("fmnist_zf", weights=fmnist_params)
    out = net.forward(x)
    assert rel_err(out, ref) <= RTOL
    path = models.save_weights(net, tmp_path / "w.npz", "fmnist_zf")
    params, arch = models.load_weights(path)
    assert arch == "fmnist_zf"
    assert all(np.array_equal(params[k], fmnist_params[k]) for k in fmnist_params)
    np.testing.assert_array_equal(models.build_model("fmnist_zf", weights=path).forward(x), out)


def test_zfcore_params_load_strictly_into_torchvision_vgg16(network, image224):
    net = models.build_model("vgg16", seed=3)
    state = models.zfcore_to_torchvision("vgg16", net.params, as_torch=True)
    tv = meta_model(torchvision.models.vgg16)
    tv.load_state_dict(state, strict=True, assign=True)
    assert torch.equal(tv.features[28].weight, torch.from_numpy(net.params["conv5_3.weight"]))
    assert torch.equal(tv.classifier[6].bias, torch.from_numpy(net.params["fc8.bias"]))


def test_random_build_is_seeded(network):
    a, b = models.build_model("fmnist_zf", seed=1), models.build_model("fmnist_zf", seed=1)
    c = models.build_model("fmnist_zf", seed=2)
    models.check_params(models.FMNIST_ZF, a.params)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["conv1.weight"], c.params["conv1.weight"])


def test_pth_torchvision_layout_guess_and_load_model(network, alexnet_pth, tv_alexnet, image224,
                                                     monkeypatch, tmp_path):
    params, arch = models.load_weights(alexnet_pth)  # architecture guessed from the keys
    assert arch == "alexnet" and params["fc6.weight"].dtype == np.float32
    ref = torch_forward(tv_alexnet, image224)
    assert rel_err(models.load_model("alexnet", path=alexnet_pth).forward(image224), ref) <= RTOL
    # $ZFCORE_ALEXNET
    monkeypatch.setenv("ZFCORE_ALEXNET", str(alexnet_pth))
    assert rel_err(models.load_model("alexnet").forward(image224), ref) <= RTOL
    # torchvision's hub cache (torch.hub.get_dir() follows $TORCH_HOME)
    monkeypatch.delenv("ZFCORE_ALEXNET")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    os.symlink(alexnet_pth, tmp_path / "hub" / "checkpoints" / models.TORCHVISION_FILES["alexnet"])
    assert models.default_weights_path("alexnet").parent == tmp_path / "hub" / "checkpoints"
    assert rel_err(models.load_model("alexnet").forward(image224), ref) <= RTOL


def test_pth_zfcore_layout_guess_needs_shapes(alexnet_pth, tmp_path):
    """AlexNet and ZFNet share layer names in zfcore's layout; the shapes decide."""
    params, _ = models.load_weights(alexnet_pth)
    path = tmp_path / "alexnet_zf_layout.pt"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in params.items()}}, path)
    params2, arch = models.load_weights(path)
    assert arch == "alexnet" and all(np.array_equal(params[k], params2[k]) for k in params)


# ------------------------------------------------------------------------------------------------
# errors

def test_check_params_lists_every_problem(fmnist_params):
    p = dict(fmnist_params)
    del p["conv2.bias"]
    p["conv9.weight"] = np.zeros((2, 2), np.float32)
    p["fc6.weight"] = np.zeros((512, 2000), np.float32)
    with pytest.raises(ValueError) as e:
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
    with pytest.raises(ValueError) as e:
        models.build_model("fmnist_zf", weights=fmnist_params)
    assert all(w in str(e.value) for w in words)


def test_shape_mismatch_in_file_names_file_key_and_shapes(fmnist_params, tmp_path):
    fmnist_params["conv3.weight"] = fmnist_params["conv3.weight"][:, :32]
    path = models.save_npz(tmp_path / "bad.npz", fmnist_params, "fmnist_zf")
    with pytest.raises(ValueError) as e:
        models.load_weights(path)
    assert str(path) in str(e.value) and "conv3.weight: expected (128, 64, 3, 3), found (128, 32, 3, 3)" \
        in str(e.value)


def test_corrupt_npz(tmp_path):
    path = tmp_path / "random.npz"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError, match="random.npz: corrupt weights file"):
        models.load_weights(path)


def test_truncated_npz(fmnist_params, tmp_path):
    path = models.save_npz(tmp_path / "cut.npz", fmnist_params, "fmnist_zf")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.npz: corrupt weights file"):
        models.load_weights(path)


def test_npz_without_header_and_bare_npy(tmp_path):
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="plain.npz: not a zfcore weights file"):
        models.load_weights(tmp_path / "plain.npz")
    np.save(tmp_path / "arr.npy", np.zeros(3))
    (tmp_path / "arr.npy").rename(tmp_path / "arr.npz")
    with pytest.raises(ValueError, match="arr.npz: not a zfcore weights file"):
        models.load_weights(tmp_path / "arr.npz")


def test_damaged_member_in_npz(fmnist_params, tmp_path):
    """A zip whose member is not a valid .npy array (as a bad copy or a hand-made file can give)."""
    path = models.save_npz(tmp_path / "w.npz", fmnist_params, "fmnist_zf")
    bad = tmp_path / "damaged.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, b"garbage" if item.filename == "conv1.weight.npy" else src.read(item))
    with pytest.raises(ValueError, match="damaged.npz: corrupt weights file"):
        models.load_weights(bad)


def test_npz_for_another_architecture(fmnist_params, tmp_path):
    path = models.save_weights(fmnist_params, tmp_path / "fm.npz", "fmnist_zf")
    with pytest.raises(ValueError) as e:
        models.load_weights(path, arch="zfnet")
    assert str(e.value) == f"{path}: a weights file for architecture 'fmnist_zf', not 'zfnet'"
    with pytest.raises(ValueError, match="fm.npz: a weights file for architecture 'fmnist_zf'"):
        models.build_model("alexnet", weights=path)


def test_pth_for_another_architecture(fmnist_params, tmp_path):
    path = tmp_path / "fm.pth"
    torch.save(models.zfcore_to_torchvision("fmnist_zf", fmnist_params, as_torch=True), path)
    params, arch = models.load_weights(path)  # torchvision layout, guessed
    assert arch == "fmnist_zf" and all(np.array_equal(params[k], fmnist_params[k]) for k in params)
    with pytest.raises(ValueError) as e:
        models.load_weights(path, arch="zfnet")
    msg = str(e.value)
    assert msg.startswith(str(path)) and "'zfnet'" in msg and "conv1.weight" in msg


def test_pth_unknown_architecture_and_not_a_state_dict(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"layer.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="odd.pth: cannot tell which architecture"):
        models.load_weights(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="odd.pth: not a state dict"):
        models.load_weights(path)


def test_corrupt_pth(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(ValueError, match="random.pth: corrupt or unreadable PyTorch weights file"):
        models.load_weights(path, arch="alexnet")


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.npz: no such weights file"):
        models.load_weights(tmp_path / "nothere.npz")
    with pytest.raises(FileNotFoundError, match="nothere.pth: no such weights file"):
        models.build_model("vgg16", weights=tmp_path / "nothere.pth")
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(ValueError, match="w.h5: unknown weights format"):
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
    with pytest.raises(ValueError, match="fc6.weight"):
        models.save_weights({**fmnist_params, "fc6.weight": np.zeros((1, 1))}, tmp_path / "w.npz",
                            "fmnist_zf")
    with pytest.raises(ValueError, match="ending in .npz"):
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
    assert "build_model('vgg16') gives random weights" in msg
    monkeypatch.setenv("ZFCORE_VGG16", str(tmp_path / "gone.pth"))
    with pytest.raises(FileNotFoundError, match="gone.pth"):
        models.load_model("vgg16")
    with pytest.raises(FileNotFoundError, match="no pretrained weights are known for 'zfnet'"):
        models.load_model("zfnet")


def test_load_model_embedded_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "ASSETS", tmp_path)
    with pytest.raises(FileNotFoundError, match="fmnist_zf.npz: the embedded model's weights are missing"):
        models.load_model()


def test_load_model_embedded_shipped(network):
    net = models.load_model()
    models.check_params(models.FMNIST_ZF, net.params)
    x = np.zeros((2, 1, 28, 28), np.float32)
    assert net.forward(x).shape == (2, 10)


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
    with pytest.raises(ValueError, match="vgg.npz: a checkpoint for architecture 'vgg16'"):
        models.load_checkpoint(other)
    bad = models.save_npz(tmp_path / "bad.npz", {"conv1.weight": np.zeros((3, 3), np.float32)}, "fmnist_zf")
    with pytest.raises(ValueError, match="bad.npz"):
        models.load_checkpoint(bad)


def test_importing_models_does_not_import_torch():
    code = ("import sys, zfcore.models as m; m.get_spec('vgg16'); m.check_params('fmnist_zf', "
            "{k: __import__('numpy').zeros(s) for k, s in m.param_shapes(m.FMNIST_ZF).items()}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
