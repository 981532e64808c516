"""Training smoke test: a short run on a small subset lowers the loss and exports loadable weights."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from zfcore import data  # noqa: E402
from zfcore.torch import train  # noqa: E402
from zfcore.models import FMNIST_ZF, checkpoints, load_npz, param_shapes  # noqa: E402
from zfcore.torch.reference import torch_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A 'training split' of 256 shipped test images, so the test runs offline anywhere."""
    root = tmp_path_factory.mktemp("fmnist")
    x, y = data.load_dataset("test", limit=256)
    imgs = (x[:, 0] * 255).round().astype(np.uint8)
    for split in ("train", "test"):
        data.write_idx(root / (data.loading._FILES[split][0] + ".gz"), imgs)
        data.write_idx(root / (data.loading._FILES[split][1] + ".gz"), y.astype(np.uint8))
    return root


@pytest.mark.slow
def test_short_run_lowers_loss_and_exports(tiny_root, tmp_path):
    hist = train.train(epochs=3, out=tmp_path, root=tiny_root, batch_size=32, lr=1e-2, threads=2,
                       quiet=True, checkpoints=(1, 2), batchnorm=False, precision="fp32")
    assert hist["epochs"][-1]["test_loss"] < 0.8 * hist["initial"]["test_loss"]
    params, arch, meta = load_npz(tmp_path / "fmnist_zf.npz")
    assert arch == "fmnist_zf" and meta["epoch"] == 3
    made = tmp_path.parent / "made-by-mkdir"
    made.mkdir()
    assert tmp_path.stat().st_mode & 0o777 == made.stat().st_mode & 0o777   # not the private mkdtemp mode
    assert {k: v.shape for k, v in params.items()} == param_shapes(FMNIST_ZF)
    # checkpoints at the requested epochs and the last one, stored as float16
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.npz"))
    assert names == ["epoch_01.npz", "epoch_02.npz", "epoch_03.npz"]
    with np.load(tmp_path / "checkpoints" / "epoch_02.npz") as z:
        assert z["conv1.weight"].dtype == np.float16
    # the paper's renormalisation held: no conv filter RMS above the radius (float32 slack)
    for k, v in params.items():
        if v.ndim == 4:
            rms = np.sqrt((v.astype(np.float64) ** 2).mean(axis=(1, 2, 3)))
            assert rms.max() <= train.RMS_RADIUS * (1 + 1e-5)


def test_refuses_to_overwrite(tiny_root, tmp_path):
    (tmp_path / "fmnist_zf.npz").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        train.train(epochs=1, out=tmp_path, root=tiny_root, quiet=True)
    assert (tmp_path / "fmnist_zf.npz").read_bytes() == b"keep me"


def test_renormalise_filters_matches_definition():
    conv = torch.nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.stack([torch.full((2, 3, 3), 0.05), torch.full((2, 3, 3), 0.3),
                                       torch.full((2, 3, 3), -0.2)]))
    n = train.renormalise_filters(torch.nn.Sequential(conv), radius=0.1)
    assert n == 2
    rms = conv.weight.detach().pow(2).mean(dim=(1, 2, 3)).sqrt()
    np.testing.assert_allclose(rms.numpy(), [0.05, 0.1, 0.1], rtol=1e-6)
    assert float(conv.weight[2].detach().max()) < 0  # direction kept


def test_batchnorm_folds_exactly_into_the_plain_network():
    """fold_batchnorm: a conv net with BatchNorm (eval mode, non-trivial statistics) equals the plain
    spec with folded weights, in torch and in zfcore's numpy network (the identity
    gamma * (conv(x) - mean) / sqrt(var + eps) + beta = conv'(x))."""
    from zfcore import models

    gen = torch.Generator().manual_seed(1)
    bn_net = torch_model(FMNIST_ZF, batchnorm=True, dtype="float64")
    train.kaiming_init(bn_net, gen)
    with torch.no_grad():
        for m in bn_net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.uniform_(0.5, 2.0, generator=gen)
                m.bias.normal_(0.0, 0.5, generator=gen)
                m.running_mean.normal_(0.0, 1.0, generator=gen)
                m.running_var.uniform_(0.2, 3.0, generator=gen)
                assert c == m.running_var.numel()
    bn_net.eval()
    x = torch.rand(6, 1, 28, 28, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        ref = bn_net(x).numpy()
    params = train.fold_batchnorm(bn_net)
    assert set(params) == set(param_shapes(FMNIST_ZF))          # no _bn keys left: the plain spec
    plain = torch_model(FMNIST_ZF, params, dtype="float64")
    with torch.no_grad():
        out_torch = plain(x).numpy()
    out_numpy = models.build_model("fmnist_zf", weights=params).forward(x.numpy().astype(np.float32)).output
    scale = np.abs(ref).max()
    assert np.abs(out_torch - ref).max() <= 1e-5 * scale      # float32 rounding of the folded weights
    assert np.abs(out_numpy - ref).max() <= 1e-5 * scale


@pytest.mark.slow
def test_batchnorm_bf16_run_exports_the_plain_spec(tiny_root, tmp_path):
    hist = train.train(epochs=2, out=tmp_path, root=tiny_root, batch_size=32, threads=2, quiet=True,
                       checkpoints=(1,), batchnorm=True, precision="bf16")
    assert hist["config"]["batchnorm"] and hist["config"]["precision"] == "bf16"
    assert hist["epochs"][-1]["test_loss"] < hist["initial"]["test_loss"]
    params, arch, meta = load_npz(tmp_path / "fmnist_zf.npz")
    assert {k: v.shape for k, v in params.items()} == param_shapes(FMNIST_ZF)
    assert meta["test_acc"] == hist["final"]["test_acc"]
    # the accuracy recorded for the export is that of the exported weights in the plain mirror
    plain = torch_model(FMNIST_ZF, params)
    x, y = data.load_dataset("test", root=tiny_root)
    _, acc = train.evaluate(plain, x, y, "cpu")
    assert acc == hist["final"]["test_acc"]


def test_unknown_precision_is_refused(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="precision"):
        train.train(epochs=1, out=tmp_path, root=tiny_root, quiet=True, precision="fp8")
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_same_seed_same_weights(tiny_root, tmp_path):
    """Seeded runs are reproducible: the same command twice gives bit-identical weights (same machine
    and thread count), with BatchNorm and bf16 autocast as the shipped model was trained."""
    runs = []
    for k in range(2):
        train.train(epochs=1, out=tmp_path / str(k), root=tiny_root, batch_size=32, threads=2, quiet=True,
                    checkpoints=(), batchnorm=True, precision="bf16", seed=3)
        runs.append(load_npz(tmp_path / str(k) / "fmnist_zf.npz")[0])
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        np.testing.assert_array_equal(runs[0][key], runs[1][key])


def test_defaults_are_the_shipped_recipe():
    """train()'s defaults are the recipe recorded in the shipped history.json (so that `zfcore train
    --out zfcore/assets/models` remakes the shipped weights)."""
    import inspect
    import json

    from zfcore.models import ASSETS

    shipped = json.loads((ASSETS / "history.json").read_text())
    defaults = {k: p.default for k, p in inspect.signature(train.train).parameters.items()}
    assert defaults["spec"] == shipped["arch"] == "fmnist_zf" and defaults["seed"] == shipped["seed"]
    for key in ("epochs", "batch_size", "lr", "weight_decay", "subset", "batchnorm", "precision"):
        assert defaults[key] == shipped["config"][key], key
    assert train.RMS_RADIUS == shipped["config"]["rms_radius"] and defaults["renorm"]
    assert defaults["export"] == "full" and defaults["eval_images"] is None
    assert sorted(set(defaults["checkpoints"]) | {defaults["epochs"]}) == [e for e, _ in checkpoints()]


def test_default_out_is_in_the_working_directory(tmp_path, monkeypatch):
    from zfcore.models import ASSETS

    monkeypatch.chdir(tmp_path)
    out = train.default_out("fmnist_zf")
    assert out.is_absolute() and out.resolve() == (tmp_path / "zfcore-train" / "fmnist_zf").resolve()
    assert ASSETS.resolve() not in out.resolve().parents and out.resolve() != ASSETS.resolve()


def test_spec_argument_is_checked(tmp_path):
    from zfcore.errors import ArgumentError

    with pytest.raises(ArgumentError, match="needs a name"):
        train.train(spec=list(FMNIST_ZF), out=tmp_path, quiet=True)
    with pytest.raises(ArgumentError, match="unknown architecture 'fmnist_zff'; did you mean 'fmnist_zf'"):
        train.train(spec="fmnist_zff", out=tmp_path, quiet=True)
    with pytest.raises(ArgumentError, match="run name"):
        train.train(spec=list(FMNIST_ZF), name="../up", out=tmp_path, quiet=True)
    with pytest.raises(ArgumentError, match="export"):
        train.train(out=tmp_path, quiet=True, export="half")
    assert not any(tmp_path.iterdir())


def _check_variant_run(name, folder, subset, options, epochs=1):
    """A variant's run folder, loaded with load_variant: the record (command, epochs, seconds, the
    accuracy of the stored weights), the stored float16 feature extractor and the loaded network's spec."""
    import json

    from zfcore import models
    from zfcore.torch import variants

    assert sorted(p.name for p in folder.iterdir()) == ["history.json", f"{name}.npz"]
    hist = json.loads((folder / "history.json").read_text())
    assert hist["command"] == (f"python -m zfcore.torch.variants --epochs {epochs} --only {name} "
                               f"--subset {subset} {options}")
    assert len(hist["epochs"]) == epochs and hist["seconds"] > 0
    assert 0.0 <= hist["final"]["test_acc"] <= 1.0 and hist["final"]["storage"] == "float16"
    assert hist["config"]["batchnorm"] is False and hist["config"]["renorm"] == (name != "no_renorm")
    assert [tuple(e) for e in hist["spec"]] == [tuple(e) for e in variants.variant_spec(name)]
    net, rec = variants.load_variant(name, folder)
    assert rec["name"] == name and rec["test_acc_float16"] == hist["final"]["test_acc"]
    assert rec["renorm"] == (name != "no_renorm") and rec["subset"] == subset
    assert net.spec == models.features_spec(variants.variant_spec(name))
    assert [n for n, _, _ in net.spec][-1] == "pool5" and net.input_shape == (1, 28, 28)
    k = 9 if name == "large_stride" else 5
    assert net.params["conv1.weight"].shape == (32, 1, k, k)
    with np.load(folder / f"{name}.npz") as z:       # stored as float16, the feature extractor only
        stored = {key: z[key] for key in z.files if key != "__zfcore__"}
    assert set(stored) == set(net.params) and all(v.dtype == np.float16 for v in stored.values())
    for key, v in stored.items():
        np.testing.assert_array_equal(net.params[key], v.astype(np.float32))
    assert net(np.zeros((2, 1, 28, 28), np.float32)).shape[:2] == (2, 128)
    return hist, net


def test_variant_trains_end_to_end(tiny_root, tmp_path, monkeypatch):
    """train_variant (train(spec=variant_spec(name)) underneath) for one tiny epoch, into the default
    folder ./zfcore-train/<name> of the working directory; renormalised filters stay within the radius."""
    from zfcore.torch import variants

    monkeypatch.chdir(tmp_path)
    rec = variants.train_variant("large_stride", epochs=1, subset=128, batch_size=64, root=tiny_root,
                                 threads=2, quiet=True, precision="fp32")
    folder = tmp_path / "zfcore-train" / "large_stride"
    hist, net = _check_variant_run("large_stride", folder, 128, "--batch-size 64 --precision fp32")
    assert rec["final"] == hist["final"] and hist["epochs"][0]["renormalised_filters"] >= 0
    for key, v in net.params.items():
        if v.ndim == 4:
            rms = np.sqrt((v.astype(np.float64) ** 2).mean(axis=(1, 2, 3)))
            assert rms.max() <= train.RMS_RADIUS * (1 + 1e-3)       # float16 rounding of the weights


def _variants_main(args, cwd):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-m", "zfcore.torch.variants", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_variants_module_runs_end_to_end(tiny_root, tmp_path, capsys):
    """`python -m zfcore.torch.variants` for one tiny epoch of the variant without renormalisation;
    run again, it refuses to replace the run without --overwrite."""
    from zfcore.torch import variants

    runs = tmp_path / "runs"
    args = ["--epochs", "1", "--only", "no_renorm", "--subset", "128", "--batch-size", "64", "--precision",
            "fp32", "--data", str(tiny_root), "--out", str(runs), "--threads", "2", "--quiet"]
    done = _variants_main(args, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "no_renorm: accuracy of the float16 weights" in done.stdout
    hist, _ = _check_variant_run("no_renorm", runs / "no_renorm", 128, "--batch-size 64 --precision fp32")
    assert all(e["renormalised_filters"] == 0 for e in hist["epochs"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]       # nothing else written
    with pytest.raises(SystemExit) as stop:       # the same main, in this process
        variants.main(args)
    assert stop.value.code == 2 and "pass --force (--overwrite)" in capsys.readouterr().err
