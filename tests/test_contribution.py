"""zfcore.analysis.contribution: the logit decomposition by hand and against torch autograd, cosine
similarities by hand, and one explained image against the functions it is made of."""
import numpy as np
import pytest

from zfcore import analysis, data, models
from zfcore.analysis import contribution

HEAD = [  # 1x6x6 -> conv 3 maps -> relu -> flatten (3*4*4) -> linear 2 logits
    ("conv1", "conv", dict(in_channels=1, out_channels=3, kernel=3, stride=1, padding=0)),
    ("relu1", "relu", {}),
    ("flatten", "flatten", {}),
    ("fc", "linear", dict(in_features=48, out_features=2)),
]


def test_cosine_similarity_by_hand():
    c = contribution.cosine_similarity([[1, 0], [0, 2], [3, 3], [0, 0]])
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(c, [[1, 0, s, 0], [0, 1, s, 0], [s, s, 1, 0], [0, 0, 0, 0]], atol=1e-15)
    assert contribution.mean_off_diagonal([[1, 0.5], [0.25, 1]]) == pytest.approx(0.375)
    with pytest.raises(Exception):
        contribution.mean_off_diagonal([[1.0]])


def test_linear_head_leaves_exactly_its_bias():
    net = models.build(HEAD, models.kaiming_params(HEAD, seed=3, dtype=np.float64), dtype=np.float64)
    net.params["fc.bias"][:] = [0.25, -0.5]
    x = np.random.default_rng(0).normal(size=(4, 1, 6, 6))
    for target in (0, 1):
        contrib, rest = contribution.decompose(net, x, "relu1", target)
        np.testing.assert_allclose(rest, net.params["fc.bias"][target], rtol=1e-10)
        np.testing.assert_allclose(contrib.sum(1) + rest, net.forward(x).output[:, target], rtol=1e-10)


def test_decomposition_of_the_embedded_net_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    from zfcore.torch import reference

    net = models.load_model()
    x, y = data.load_dataset("test", limit=5)
    contrib, rest = contribution.decompose(net, x, "relu5", y)
    params = {k: v.astype(np.float64) for k, v in net.params.items()}
    tm = reference.torch_model(models.get_spec("fmnist_zf"), params, dtype="float64").eval()
    h, kept = torch.from_numpy(x.astype(np.float64)), {}
    for name, m in tm.named_children():
        h = m(h)
        if name == "relu5":
            h = a = h.detach().requires_grad_(True)
        kept[name] = h
    logit = h[torch.arange(5), torch.from_numpy(y.astype(np.int64))]
    logit.sum().backward()
    ref = (a * a.grad).sum(dim=(2, 3)).detach().numpy()     # ours: float32 maps, float64 head
    np.testing.assert_allclose(contrib, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # the biases' share by hand: fc7's row of the class through the fc6 units that are active, plus b7
    active = (kept["fc6"] > 0).detach().numpy()
    beta = np.einsum("nk,nk->n", params["fc7.weight"][y], active * params["fc6.bias"]) + params["fc7.bias"][y]
    np.testing.assert_allclose(rest, beta, atol=1e-5)
    np.testing.assert_allclose(contrib.sum(1) + rest, logit.detach().numpy(), rtol=1e-6)
    assert np.abs(beta).max() > 1e-3                           # the biases' share is not zero


def test_explain_image_is_made_of_its_parts():
    net = models.load_model()
    x, y = data.load_dataset("test", limit=1)
    e = contribution.explain_image(net, x[0], int(y[0]), k=3, size=6, stride=3, fill=0.3)
    full, _ = contribution.decompose(net, x, "relu5", int(y[0]))
    np.testing.assert_array_equal(e.features, np.argsort(-full[0], kind="stable")[:3])
    np.testing.assert_allclose(e.contributions, full[0, e.features])
    assert e.contributions[0] >= e.contributions[1] >= e.contributions[2]
    assert e.logit == pytest.approx(float(net.forward(x).output[0, y[0]]), rel=1e-5)
    rec = net.forward(x)
    for p, f in zip(e.projections, e.features):
        np.testing.assert_allclose(p, rec.project("relu5", int(f)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.diag(e.similarity), 1.0)
    flat = e.projections.reshape(3, -1).astype(np.float64)
    flat /= np.linalg.norm(flat, axis=1)[:, None]
    np.testing.assert_allclose(e.similarity, flat @ flat.T, atol=1e-12)
    np.testing.assert_allclose(contribution.projection_similarity(net, x[0], "relu5", e.features),
                               e.similarity, atol=1e-12)
    assert e.total == pytest.approx(full[0].sum())
    assert -1 <= e.mean_similarity <= 1
    occ = analysis.occlusion(net, x[0], int(y[0]), size=6, stride=3, fill=0.3)
    np.testing.assert_array_equal(e.occlusion.prob, occ.prob)
