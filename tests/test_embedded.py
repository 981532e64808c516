"""The shipped embedded model: numpy inference equals PyTorch inference of the same weights on the whole
shipped test split (skipped without torch), and the shipped weights reach the accuracy that
docs/verification.md states; the checkpoints and the asset budget need numpy alone."""
import json
from pathlib import Path

import numpy as np
import pytest

import zfcore as zf
from zfcore import analysis, models
from zfcore.torch.reference import torch_model

ASSETS = Path(zf.__file__).parent / "assets"


@pytest.fixture(scope="module")
def test_split():
    return zf.data.load_dataset("test")


@pytest.fixture(scope="module")
def logits(test_split):
    """Logits of all 10,000 test images from zfcore (numpy) and from torch, same shipped weights."""
    torch = pytest.importorskip("torch")
    x, _ = test_split
    params, arch, _ = models.load_npz(ASSETS / "models" / "fmnist_zf.npz")
    tm = torch_model(models.FMNIST_ZF, params)
    with torch.no_grad():
        ref = torch.cat([tm(torch.from_numpy(x[i:i + 1000])) for i in range(0, len(x), 1000)]).numpy()
    net = models.load_model()
    return analysis.predict(net, x, batch_size=500), ref


@pytest.mark.slow
def test_numpy_and_torch_agree_on_every_test_image(logits):
    ours, ref = logits
    assert ours.shape == ref.shape == (10000, 10)
    assert np.abs(ours - ref).max() <= 1e-4
    assert np.array_equal(ours.argmax(1), ref.argmax(1))


@pytest.mark.slow
def test_shipped_accuracy_is_the_stated_one(logits, test_split):
    _, y = test_split
    acc = float((logits[0].argmax(1) == y).mean())
    # docs/verification.md states 93.10%.
    assert acc >= 0.93
    _, _, meta = models.load_npz(ASSETS / "models" / "fmnist_zf.npz")
    assert abs(acc - meta["test_acc"]) < 1e-4         # the number recorded by the training run
    hist = json.loads((ASSETS / "models" / "history.json").read_text())
    assert abs(hist["final"]["test_acc"] - acc) < 1e-4   # measured there on the exported weights


def test_last_checkpoint_is_the_shipped_model():
    """The last checkpoint's conv weights are the shipped final weights rounded to float16."""
    epoch, path = models.checkpoints()[-1]
    final, _, meta = models.load_npz(ASSETS / "models" / "fmnist_zf.npz")
    assert epoch == meta["epoch"]
    ck = models.load_checkpoint(path).params
    assert set(ck) == {k for k in final if k.split(".")[0] in {"conv1", "conv2", "conv3", "conv4", "conv5"}}
    for k, v in ck.items():
        np.testing.assert_array_equal(v, final[k].astype(np.float16).astype(np.float32))


def test_shipped_assets_fit_the_budget():
    # the test split ~4 MiB, the embedded model and its checkpoints ~11 MiB, the Fig. 6 variants ~2 MiB,
    # the Table 3 ablations ~11 MiB (whole networks, float16), the original's recorded run ~1 MiB
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert total <= 32 * 2**20, f"shipped assets take {total / 2**20:.1f} MiB (budget 32 MiB)"
