"""Linear probes (the paper's Tables 4, 5 and 7 adapted): a softmax classifier trained on top of a fixed
network's features, with few or all training images per class, layer by layer.

- ``stratified_halves``: a seeded split of labelled images into two disjoint halves, each class split
  in half; ``per_class``: n images of every class drawn from a pool;
- ``pool_grid``: a layer's maps (N, C, H, W) averaged over a g x g grid of regions -> (N, C g g);
- ``fit_softmax``: multinomial logistic regression with an L2 penalty on the weights (not the bias),
  minimised by accelerated gradient steps preconditioned with a fixed bound of the Hessian (Boehning
  1992): deterministic, no line search, no random start;
- ``probe``: accuracy on a test set of probes trained on n images per class, over several draws
  (``probe_layers``: of several layers' features, the same draws for each);
- ``scan_layers``: one forward pass over a set of images that gives both the top-k of every feature of
  some spatial layers (as ``analysis.top_k``) and each image's maximum of every map of them, with the
  activations of other layers (e.g. fully connected ones) kept whole: the features of the probes.

numpy only. Axis letters: N examples, D features, K classes (in ``scan_layers``: the k images kept
per feature), F feature maps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfcore.analysis import parallel, topk
from zfcore.errors import ArgumentError, check_count

# --- splits -----------------------------------------------------------------------------------------
def stratified_halves(labels, seed: int = 0):
    """Two disjoint sorted index arrays that together hold every index of ``labels`` (N,): each
    class's indices are shuffled (seeded) and split in half (the first half gets the smaller half of
    an odd count)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ArgumentError(f"labels must be (N,), got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    a, b = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        a.append(idx[:len(idx) // 2])
        b.append(idx[len(idx) // 2:])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def per_class(labels, n: int, rng):
    """Indices of ``n`` examples of every class of ``labels`` (N,), drawn without replacement with
    ``rng`` (a ``numpy.random.Generator``); sorted."""
    labels = np.asarray(labels)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if n > len(idx):
            raise ArgumentError(f"class {c} has {len(idx)} examples, fewer than n={n}")
        out.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(out))


def pool_grid(acts, grid: int = 1):
    """Average each map of ``acts`` (N, C, H, W) over a ``grid`` x ``grid`` grid of regions (rows and
    columns split as ``np.array_split`` splits them) -> (N, C * grid * grid), channel-major. 2-D input
    (N, D) is returned as float64 unchanged."""
    a = np.asarray(acts)
    if a.ndim == 2:
        return a.astype(np.float64)
    if a.ndim != 4 or not 1 <= grid <= min(a.shape[2:]):
        raise ArgumentError(f"pool_grid needs (N, C, H, W) maps and 1 <= grid <= min(H, W), got shape "
                            f"{a.shape} and grid={grid}")
    rows = np.array_split(np.arange(a.shape[2]), grid)
    cols = np.array_split(np.arange(a.shape[3]), grid)
    cells = [a[:, :, r[0]:r[-1] + 1, c[0]:c[-1] + 1].mean(axis=(2, 3), dtype=np.float64)
             for r in rows for c in cols]                               # grid*grid of (N, C)
    return np.stack(cells, axis=2).reshape(len(a), -1)


# --- multinomial logistic regression -----------------------------------------------------------------
def _with_bias(X):
    return np.hstack([X, np.ones((len(X), 1))])


def _loss(theta, Xb, y, lam: float):
    """``softmax_loss`` with the bias column already appended to X (Xb (N, D + 1))."""
    z = Xb @ theta
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    n = np.arange(len(Xb))
    loss = np.log(s[:, 0]).mean() - z[n, y].mean() + 0.5 * lam * np.sum(theta[:-1] ** 2)
    e /= s
    e[n, y] -= 1
    grad = Xb.T @ e
    grad /= len(Xb)
    grad[:-1] += lam * theta[:-1]
    return float(loss), grad


def softmax_loss(theta, X, y, lam: float):
    """Loss and gradient of multinomial logistic regression: the mean cross-entropy of softmax(X W + b)
    with the classes y (N,) plus lam / 2 ||W||^2. theta (D + 1, K): W with b as its last row.
    Returns (loss, gradient (D + 1, K))."""
    return _loss(np.asarray(theta, np.float64), _with_bias(np.asarray(X, np.float64)), np.asarray(y), lam)


@dataclass
class Softmax:
    """A fitted probe: weights (D, K), bias (K,), iterations run, converged (the largest gradient
    entry fell below the tolerance), loss at the end."""
    weights: np.ndarray
    bias: np.ndarray
    iterations: int
    converged: bool
    loss: float

    def predict(self, X):
        return np.argmax(np.asarray(X, np.float64) @ self.weights + self.bias, axis=1)


def fit_softmax(X, y, n_classes: int, lam: float = 1e-3, max_iter: int = 500,
                tol: float = 1e-5) -> Softmax:
    """Minimise ``softmax_loss`` over W and b from zero. The Hessian is bounded by B (x) I_K with
    B = X~'X~ / (2N) + lam (on W) (the softmax's curvature is at most 1/2, Boehning 1992; X~ = [X, 1]),
    so steps of B^-1 times the gradient never overshoot; they are accelerated (Nesterov) and the
    momentum restarts whenever it points uphill. Stops when every gradient entry is below ``tol``.
    With fewer examples than features, the fit runs on X's coordinates in its row space (the
    optimal W lies there; the rotation keeps the penalty), so its cost depends on min(N, D)."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or y.shape != (len(X),) or lam <= 0:
        raise ArgumentError(f"fit_softmax needs X (N, D), y (N,) and lam > 0, got {X.shape}, {y.shape}, "
                            f"{lam}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ArgumentError(f"classes must be in 0..{n_classes - 1}, got {y.min()}..{y.max()}")
    if len(X) < X.shape[1]:
        _, sv, vt = np.linalg.svd(X, full_matrices=False)
        basis = vt[sv > sv.max() * 1e-10].T if sv.max() > 0 else vt[:1].T       # (D, r)
        m = fit_softmax(X @ basis, y, n_classes, lam, max_iter, tol)
        return Softmax(basis @ m.weights, m.bias, m.iterations, m.converged, m.loss)
    Xb = _with_bias(X)
    B = Xb.T @ Xb / (2 * len(X))
    B[np.diag_indices(X.shape[1])] += lam
    B_inv = np.linalg.inv(B)
    theta = np.zeros((X.shape[1] + 1, n_classes))
    prev, t, it = theta, 1.0, 0
    converged = False
    for it in range(1, max_iter + 1):
        loss, g = _loss(theta, Xb, y, lam)
        if np.abs(g).max() < tol:
            converged = True
            break
        new = theta - B_inv @ g
        if np.sum(g * (new - prev)) > 0:                   # momentum points uphill: restart
            t = 1.0
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        theta, prev, t = new + (t - 1) / t_next * (new - prev), new, t_next
    loss, _ = _loss(theta, Xb, y, lam)
    return Softmax(theta[:-1], theta[-1], it, converged, loss)


# --- probes on n images per class ---------------------------------------------------------------------
@dataclass
class Probe:
    """Test accuracy of probes: ``accuracy`` dict n -> (draws,) accuracies, one per draw of n training
    images per class (n = None: every training image, one fit); ``correct`` dict n -> (draws, M) bool,
    which of the M test examples each draw's probe classifies right; ``lam`` the penalty;
    ``iterations`` the most iterations any fit ran; ``converged`` whether every fit met the tolerance."""
    accuracy: dict
    correct: dict
    lam: float
    iterations: int
    converged: bool


def probe(train_X, train_y, test_X, test_y, ns, draws, lam: float = 1e-2, seed: int = 0,
          max_iter: int = 500, tol: float = 1e-4) -> Probe:
    """Train ``fit_softmax`` probes on ``draws[i]`` random draws of ``ns[i]`` training examples per class
    (``ns[i]`` None: all of them, one fit) and test each on every test example. Features are
    standardised with the mean and standard deviation of all of ``train_X`` (no labels used), the same
    for every draw. The draws come from ``numpy.random.default_rng(seed)``, in the order of ``ns``, so
    probes of other features with the same labels and seed train on the same examples."""
    train_X, test_X = np.asarray(train_X, np.float64), np.asarray(test_X, np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    mu, sd = train_X.mean(0), train_X.std(0)
    sd[sd == 0] = 1.0
    train_X, test_X = (train_X - mu) / sd, (test_X - mu) / sd
    K = int(max(train_y.max(), test_y.max())) + 1
    rng = np.random.default_rng(seed)
    correct, its, ok = {}, 0, True
    for n, d in zip(ns, draws):
        correct[n] = []
        for _ in range(1 if n is None else check_count(d, "draws", 1)):
            idx = np.arange(len(train_y)) if n is None else per_class(train_y, n, rng)
            m = fit_softmax(train_X[idx], train_y[idx], K, lam, max_iter, tol)
            correct[n].append(m.predict(test_X) == test_y)
            its, ok = max(its, m.iterations), ok and m.converged
        correct[n] = np.array(correct[n])
    return Probe({n: c.mean(axis=1) for n, c in correct.items()}, correct, lam, its, ok)


def probe_layers(features: dict, labels, train, test, ns, draws, lam: float = 1e-2, seed: int = 0,
                 threads=None, **fit) -> dict:
    """``probe`` of every entry of ``features`` (dict name -> (N, D) features of the same N examples),
    trained on the examples ``train`` and tested on ``test`` (index arrays), all with the same draws;
    the entries run in ``threads`` threads (``zfcore.analysis.parallel``). Returns dict name -> Probe."""
    labels = np.asarray(labels)
    names = list(features)

    def one(name):
        X = np.asarray(features[name]).reshape(len(labels), -1)
        return probe(X[train], labels[train], X[test], labels[test], ns, draws, lam, seed, **fit)

    return dict(zip(names, parallel.map_items(one, names, parallel.resolve(threads))))


# --- one pass for the top-k and the probes' features -------------------------------------------------------
@dataclass
class Scan:
    """``tops``: dict layer -> ``TopK`` (as ``analysis.top_k`` gives, every feature); ``maxima``: dict
    layer -> (N, F) each image's maximum of every map of that layer; ``kept``: dict layer -> (N, ...)
    the activations of the other layers asked for."""
    tops: dict
    maxima: dict
    kept: dict


def scan_layers(net, images, layers, k: int = 9, keep=(), batch_size: int = 500, threads=None) -> Scan:
    """One forward pass over ``images`` (N, C, H, W) in batches, up to the deepest of ``layers``
    (spatial) and ``keep`` (any): the top-k of every feature of ``layers``, each image's map maxima
    of them and the whole activations of ``keep``. The top-k are those of ``analysis.top_k`` (same
    ranking and ties, the same projections); this saves the second forward pass that computing the
    maxima and ``keep`` apart would take. Each batch is split over ``threads`` threads."""
    source = topk.as_source(images)
    keep = [keep] if isinstance(keep, str) else list(keep)
    names, feats, _, k = topk.plan(net, source, layers, k, None, batch_size)
    if set(keep) & set(names):
        raise ArgumentError(f"layers {sorted(set(keep) & set(names))} are both scanned and kept")
    threads = parallel.resolve(threads)
    deepest = max(names + keep, key=net.index)

    def part(x):
        _, acts = net.infer(x, upto=deepest, keep=names + keep)
        out = {name: acts[name].copy() for name in keep}
        for name in names:
            flat = acts[name].reshape(acts[name].shape[0], acts[name].shape[1], -1)
            arg = flat.argmax(axis=2)
            out[name] = (np.take_along_axis(flat, arg[..., None], axis=2)[..., 0],
                         np.stack(np.divmod(arg, acts[name].shape[3]), axis=-1))
        return out

    res = []
    for lo in range(0, len(source), batch_size):
        x = source.load(np.arange(lo, min(lo + batch_size, len(source))))
        res += parallel.map_parts(lambda a, b: part(x[a:b]), len(x), threads)
    ids = np.arange(len(source))
    states, maxima = {}, {}
    for name in names:
        vals = np.concatenate([r[name][0] for r in res])
        maxima[name] = vals
        states[name] = topk.TopState.from_batch(vals, np.concatenate([r[name][1] for r in res]), ids, k)
    parts = parallel.map_items(lambda i: topk.project_winners(net, source, states, feats, i),
                               topk.id_chunks(topk.winners(states), batch_size, threads), threads)
    kept = {name: np.concatenate([r[name] for r in res]) for name in keep}
    return Scan(topk.assemble(net, source, states, feats, parts), maxima, kept)
