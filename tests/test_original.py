"""The ORIGINAL huybery/VisualizingCNN, run from a clone (zfcore.comparison.original), against zfcore.

The tests that run the original need a clone: set ``ZFCORE_HUYBERY=/path/to/VisualizingCNN`` (``git clone
https://github.com/huybery/VisualizingCNN``) and have OpenCV installed; they are skipped otherwise. They
compare zfcore with the original's own code (its ``vis_layer``, ``Vgg16Conv``, ``Vgg16Deconv``) on the same
seeded random VGG16 weights and its own demo photo, and the re-creation (``zfcore.comparison.huybery``) with it. The
others (no clone needed) check the configuration and its errors.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zfcore.comparison import compare, huybery, original, record
from zfcore.errors import ZfcoreError

LAYERS = (0, 5, 14, 21, 28)          # conv1_1, conv2_1, conv3_3, conv4_3, conv5_3 (features indices)


def tree_hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".git" not in p.parts}


# ------------------------------------------------------------------------------------------------
# without a clone

def test_no_clone_configured(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.delenv(original.ENV, raising=False)
    assert original.find_clone() is None
    with pytest.raises(original.CloneError, match="git clone https://github.com/huybery/VisualizingCNN"):
        original.load()


def test_bad_clone_paths(monkeypatch, tmp_path):
    monkeypatch.setenv(original.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(original.CloneError, match=r"\$ZFCORE_HUYBERY = .*nowhere.*no such folder"):
        original.find_clone()
    (tmp_path / "models").mkdir()
    (tmp_path / "main.py").write_text("raise SystemExit('must not be imported')\n")
    with pytest.raises(original.CloneError, match=r"path = .*missing models/__init__.py"):
        original.find_clone(tmp_path)
    assert issubclass(original.CloneError, ValueError) and issubclass(original.CloneError, ZfcoreError)


def test_importing_original_does_not_import_torch():
    code = "import sys, zfcore.comparison.original; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------
# with a clone ($ZFCORE_HUYBERY)

@pytest.fixture(scope="module")
def clone():
    path = os.environ.get(original.ENV)
    if not path:
        pytest.skip(f"no clone of huybery/VisualizingCNN: set ${original.ENV}")
    pytest.importorskip("torch")
    pytest.importorskip("cv2")
    return original.find_clone(path)


@pytest.fixture(scope="module")
def run(clone):
    """The original built from the clone on zfcore's seeded VGG16 weights; its demo photo; the agreement."""
    from zfcore import models

    before = tree_hashes(clone)
    net = models.build_model("vgg16", seed=0)
    orig = original.load(clone, params=net.params, bias_seed=0)
    x = orig.load_image()
    rows, runs = compare.original_agreement(orig, net, x, LAYERS)
    return dict(net=net, orig=orig, x=x, rows=rows, runs=runs, before=before)


def test_original_imports_leave_no_trace(run, clone):
    assert not any(k in sys.modules for k in ("models", "utils")), "the clone's packages were left in sys.modules"
    assert str(clone) not in sys.path
    assert tree_hashes(clone) == run["before"], "the clone's files changed"


def test_original_runs_zfcore_weights(run):
    """The stand-in for the ImageNet download put zfcore's weights into both of the original's networks."""
    net, orig = run["net"], run["orig"]
    conv0 = orig.conv.features[0]
    np.testing.assert_array_equal(conv0.weight.detach().numpy(), net.params["conv1_1.weight"])
    np.testing.assert_array_equal(orig.deconv.features[30].weight.detach().numpy(), net.params["conv1_1.weight"])
    np.testing.assert_array_equal(orig.conv.classifier[6].bias.detach().numpy(), net.params["fc8.bias"])


def test_zfcore_equals_the_original_without_deconv_bias(run):
    """float32: within 1e-5 relative once both use the same switches (near-ties of the two forward passes
    aside, see compare.switch_flips), with the same support. On its own switches the original's support
    may differ where a flipped switch moves a value (69 pixels of 50 176 at conv5_3 on its cat photo)."""
    for row in run["rows"]:
        assert row["ties"] == 1, row
        assert row["same, on zfcore's switches"] < 1e-5, row
        assert row["support zfcore"] == row["support original on zfcore's switches"], row
        assert abs(row["support zfcore"] - row["support original (bias zeroed)"]) < record.SHARE, row
        assert row["original: published vs bias zeroed"] > 1.0, row
    assert run["rows"][0]["zfcore vs original (bias zeroed)"] < 1e-5      # conv1_1: no pool below


def test_published_biases_cover_the_image(run):
    for row in run["rows"]:
        assert row["support original (published)"] == 1.0, row
        assert row["published: support outside the receptive field"] > 0.5, row
        assert row["original (published biases) vs zfcore"] > 1.0, row


def test_bias_setting_restored_and_reproducible(run, clone):
    orig = run["orig"]
    for m, b in zip(orig._transposed, orig.published_biases):
        np.testing.assert_array_equal(m.bias.detach().numpy(), b.numpy())
    again = original.load(clone, params=run["net"].params, bias_seed=0)
    np.testing.assert_array_equal(again.published_biases[0].numpy(), orig.published_biases[0].numpy())
    with pytest.raises(ValueError, match="deconv bias"):
        orig.deconv_bias("random")


def test_recreation_equals_the_original(run):
    """zfcore.comparison.huybery.Recreation (bias zero) against the original's own vis_layer: same selection, same
    float output, the same uint8 picture (to one grey level)."""
    rec = huybery.Recreation("vgg16", run["net"].params, deconv_bias="zero")
    rec.forward(run["x"])
    for name, r in run["runs"].items():
        mine, sel = rec.project(name)
        theirs = r["zero"]
        assert (sel.feature, sel.positions) == (theirs.feature, theirs.positions), name
        assert compare.relative_error(mine, theirs.output) < 1e-6, name
        shown = huybery.minmax_uint8(mine).astype(int)
        assert np.abs(shown - theirs.image).max() <= 1, name


# ------------------------------------------------------------------------------------------------
# the biases' effect next to the activations' scale (no clone needed: the re-creation)

def test_bias_effect_scale_measures():
    """bias_effect_images equals bias_effect image by image; its batched mirror run equals separate
    runs; the bias RMS equals the biases of the transposed convs of every conv at or below the layer;
    without biases the mirror is positively homogeneous, so the x10 run shrinks the biases' effect."""
    torch = pytest.importorskip("torch")
    from zfcore import data, models

    fm = models.load_model()
    images, _ = data.load_dataset("test", limit=3)
    convs = huybery.conv_layers("fmnist_zf")
    per = compare.bias_effect_images(fm.spec, fm.params, [x[None] for x in images], convs, net=fm)
    assert per[1] == compare.bias_effect(fm.spec, fm.params, images[1:2], convs, net=fm)
    plain = compare.bias_effect(fm.spec, fm.params, images[1:2], convs, net=fm, scale=None)
    assert [{k: v for k, v in r.items() if "x10" not in k} for r in per[1]] == plain
    rand = huybery.Recreation(fm.spec, fm.params, deconv_bias="random", bias_seed=0)
    zero = huybery.Recreation(fm.spec, fm.params, deconv_bias="zero")
    rand.forward(images[:1])
    zero.forward(images[:1])
    shared = huybery.Recreation(fm.spec, fm.params, deconv_bias="random", bias_seed=0)
    shared.forward_of(zero)                      # the forward pass does not depend on the deconv biases
    for i, m in rand.feature_maps.items():
        assert torch.equal(shared.feature_maps[i], m)
    assert all(torch.equal(shared.pool_locs[i], s) for i, s in rand.pool_locs.items())
    with pytest.raises(ValueError, match="different networks"):
        shared.forward_of(huybery.Recreation("alexnet", models.build_model("alexnet", seed=0).params))
    for row in per[0]:
        name = row["layer"]
        (r, sel), (z, _) = rand.project(name), zero.project(name)
        assert row["value"] == sel.value and row["feature"] == sel.feature
        assert row["random vs zero"] == pytest.approx(compare.relative_error(r, z), rel=1e-5)
        below = [rand.conv2deconv[i] for i in rand.conv2deconv if i <= rand.index[name]]
        biases = np.concatenate([rand.deconv[d].bias.detach().numpy() for d in below]).astype(float)
        assert row["deconv bias rms"] == pytest.approx(np.sqrt(np.mean(biases ** 2)), rel=1e-6)
        start, _ = zero.select(name)
        np.testing.assert_allclose(zero.deconv_from(10 * start, name)[0].numpy(), 10 * z,
                                   rtol=1e-5, atol=1e-6 * np.abs(z).max() * 10)
        assert row["random vs zero, activation x10"] < 0.2 * row["random vs zero"], row
