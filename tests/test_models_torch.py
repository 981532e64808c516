"""Architectures and weights against torch: specs against torchvision's own models (their state dicts
and forward passes), ``zfcore.torch.reference.torch_model`` (the PyTorch mirror of a spec) for map sizes and
forwards, and .pth files. torch is imported here freely; ``zfcore.models`` itself must not import it
(``test_models.py``). Skipped without torch and torchvision.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from zfcore import models  # noqa: E402
from zfcore.torch import train as ztrain  # noqa: E402
from zfcore.torch.reference import torch_model  # noqa: E402

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
    from zfcore.core import network

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
    return ztrain.fold_batchnorm(perturb_biases(torch_model(models.FMNIST_ZF), 3))


def torch_forward(model, x):
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


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


@pytest.mark.parametrize("arch", list(models.SPECS))
def test_torch_mirror_has_spec_parameters(arch):
    with torch.device("meta"):
        state = torch_model(models.SPECS[arch]).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == models.param_shapes(models.SPECS[arch])


def test_zfnet_map_sizes_match_the_paper():
    """Zeiler & Fergus 2014, Fig. 3: 224 -> conv1 110 -> pool1 55 -> conv2 26 -> pool2 13 -> conv3-5 13
    -> pool5 6, measured on torch's mirror of the spec (not zfcore's size arithmetic)."""
    spec = models.zfnet_spec()
    model = torch_model(spec).eval()
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


def test_vgg16_forward_equals_torchvision(network, tv_vgg16, image224):
    params = models.torchvision_to_zfcore("vgg16", tv_vgg16.state_dict())
    net = models.build_model("vgg16", weights=params)
    assert rel_err(net.forward(image224).output, torch_forward(tv_vgg16, image224)) <= RTOL


def test_alexnet_forward_equals_torchvision(network, tv_alexnet, image224):
    params = models.torchvision_to_zfcore("alexnet", tv_alexnet.state_dict())
    net = models.build_model("alexnet", weights=params)
    assert rel_err(net.forward(image224).output, torch_forward(tv_alexnet, image224)) <= RTOL


def test_zfnet_forward_equals_torch_mirror(network, image224):
    """Also checks zfcore's LRN against torch's LocalResponseNorm (it changes this output by ~5%)."""
    torch.manual_seed(0)
    model = perturb_biases(torch_model(models.zfnet_spec()), 4).eval()
    net = models.build_model("zfnet", weights=ztrain.fold_batchnorm(model))
    assert rel_err(net.forward(image224).output, torch_forward(model, image224)) <= RTOL


def test_fmnist_forward_equals_torch_mirror_and_npz_round_trip(network, fmnist_params, tmp_path):
    x = np.random.default_rng(1).random((8, 1, 28, 28), dtype=np.float32)
    model = torch_model(models.FMNIST_ZF, fmnist_params)
    ref = torch_forward(model, x)
    net = models.build_model("fmnist_zf", weights=fmnist_params)
    out = net.forward(x).output
    assert rel_err(out, ref) <= RTOL
    path = models.save_weights(net, tmp_path / "w.npz", "fmnist_zf")
    params, arch = models.load_weights(path)
    assert arch == "fmnist_zf"
    assert all(np.array_equal(params[k], fmnist_params[k]) for k in fmnist_params)
    np.testing.assert_array_equal(models.build_model("fmnist_zf", weights=path).forward(x).output, out)


def test_zfcore_params_load_strictly_into_torchvision_vgg16(network, image224):
    net = models.build_model("vgg16", seed=3)
    state = models.zfcore_to_torchvision("vgg16", net.params, as_torch=True)
    tv = meta_model(torchvision.models.vgg16)
    tv.load_state_dict(state, strict=True, assign=True)
    assert torch.equal(tv.features[28].weight, torch.from_numpy(net.params["conv5_3.weight"]))
    assert torch.equal(tv.classifier[6].bias, torch.from_numpy(net.params["fc8.bias"]))


def test_pth_torchvision_layout_guess_and_load_model(network, alexnet_pth, tv_alexnet, image224,
                                                     monkeypatch, tmp_path):
    params, arch = models.load_weights(alexnet_pth)  # architecture guessed from the keys
    assert arch == "alexnet" and params["fc6.weight"].dtype == np.float32
    ref = torch_forward(tv_alexnet, image224)
    assert rel_err(models.load_model("alexnet", path=alexnet_pth).forward(image224).output, ref) <= RTOL
    # $ZFCORE_ALEXNET
    monkeypatch.setenv("ZFCORE_ALEXNET", str(alexnet_pth))
    assert rel_err(models.load_model("alexnet").forward(image224).output, ref) <= RTOL
    # torchvision's hub cache (torch.hub.get_dir() follows $TORCH_HOME)
    monkeypatch.delenv("ZFCORE_ALEXNET")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    os.symlink(alexnet_pth, tmp_path / "hub" / "checkpoints" / models.TORCHVISION_FILES["alexnet"])
    assert models.default_weights_path("alexnet").parent == tmp_path / "hub" / "checkpoints"
    assert rel_err(models.load_model("alexnet").forward(image224).output, ref) <= RTOL


def test_pth_zfcore_layout_guess_needs_shapes(alexnet_pth, tmp_path):
    """AlexNet and ZFNet share layer names in zfcore's layout; the shapes decide."""
    params, _ = models.load_weights(alexnet_pth)
    path = tmp_path / "alexnet_zf_layout.pt"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in params.items()}}, path)
    params2, arch = models.load_weights(path)
    assert arch == "alexnet" and all(np.array_equal(params[k], params2[k]) for k in params)


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


