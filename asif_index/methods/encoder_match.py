"""Do two unaligned encoders represent the world alike, and can their outputs be paired
without training? (After Maniparambil et al., "Do Vision and Language Encoders Represent the
World Similarly?", CVPR 2024: CKA between unaligned encoders, seeded graph matching by fast
QAP, and a localized CKA for matching.)

Everything takes paired (or candidate) embeddings as float arrays, rows = items:
``image`` [n, d_i] and ``text`` [n, d_t] (row i of each is one pair where pairs are given).

* :func:`linear_cka`, :func:`rbf_cka`: centred kernel alignment of the two spaces (1 = the same
  geometry up to rotation and scale, 0 = unrelated);
* :func:`mutual_knn`: share of each item's k nearest neighbours that both spaces agree on;
* :func:`diagnose`: the two, a shuffled-pairs baseline, retrieval against the number of
  anchors, and a verdict a user can act on (``asif-index lab doctor``);
* :func:`match_unpaired`: recover the pairing of a batch of images and a batch of captions
  from a few seed pairs (``asif-index lab match``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal

import numpy as np

from asif_index.errors import ConfigError, ShapeError

MatchMethod = Literal["qap", "local-cka", "asif-lap", "asif-nn"]
MATCH_METHODS: tuple[str, ...] = ("qap", "local-cka", "asif-lap", "asif-nn")


def _pair_check(image: np.ndarray, text: np.ndarray, what: str = "pairs") -> tuple:
    x = np.asarray(image, np.float64)
    y = np.asarray(text, np.float64)
    if x.ndim != 2 or y.ndim != 2:
        raise ShapeError(f"{what}: image and text embeddings must be 2-D [n, d]; got "
                         f"{x.shape} and {y.shape}")
    if len(x) != len(y):
        raise ShapeError(f"{what}: {len(x)} image rows but {len(y)} text rows (row i of each "
                         "must be pair i)")
    if len(x) < 4:
        raise ShapeError(f"{what}: at least 4 pairs are needed; got {len(x)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ShapeError(f"{what}: embeddings hold NaN or infinite values")
    return x, y


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def linear_cka(image: np.ndarray, text: np.ndarray) -> float:
    """Linear CKA between the rows' two representations (features centred)."""
    x, y = _pair_check(image, text)
    x = x - x.mean(0)
    y = y - y.mean(0)
    # ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F): the d x d form, cheap when n >> d
    num = np.linalg.norm(y.T @ x) ** 2
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(num / den) if den > 0 else 0.0


def _centred_rbf(x: np.ndarray, width: float) -> np.ndarray:
    sq = np.sum(x * x, 1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    sigma2 = (width * np.median(np.sqrt(d2[np.triu_indices(len(x), 1)]))) ** 2
    k = np.exp(-d2 / (2 * max(sigma2, 1e-12)))
    return k - k.mean(0) - k.mean(1)[:, None] + k.mean()


def rbf_cka(image: np.ndarray, text: np.ndarray, width: float = 0.5) -> float:
    """CKA with Gaussian kernels of bandwidth ``width`` x the median pairwise distance
    (n x n kernels: subsample to a few thousand rows)."""
    x, y = _pair_check(image, text)
    kx, ky = _centred_rbf(_unit(x), width), _centred_rbf(_unit(y), width)
    den = np.sqrt(np.sum(kx * kx) * np.sum(ky * ky))
    return float(np.sum(kx * ky) / den) if den > 0 else 0.0


def _knn(x: np.ndarray, k: int) -> np.ndarray:
    u = _unit(x)
    s = u @ u.T
    np.fill_diagonal(s, -np.inf)
    return np.argpartition(-s, k - 1, axis=1)[:, :k]


def mutual_knn(image: np.ndarray, text: np.ndarray, k: int = 10) -> float:
    """Mean share of each item's ``k`` cosine nearest neighbours (itself excluded) that are
    the same in both spaces; random spaces give about k / (n - 1)."""
    x, y = _pair_check(image, text)
    if not 1 <= k < len(x):
        raise ConfigError(f"k must be in [1, {len(x) - 1}] for {len(x)} pairs; got {k}")
    a, b = _knn(x, k), _knn(y, k)
    return float(np.mean([len(set(r) & set(s)) / k for r, s in zip(a.tolist(), b.tolist())]))


@dataclass
class Diagnosis:
    """What :func:`diagnose` measured on a paired set (``shuffled``: the same with the text
    rows permuted, the baseline of unrelated pairs)."""

    pairs: int
    sample: int
    linear_cka: float
    rbf_cka: float
    mutual_knn: float
    shuffled_linear_cka: float
    shuffled_linear_cka_sd: float
    shuffled_rbf_cka: float
    shuffled_mutual_knn: float
    cka_z: float
    retrieval: list[dict] = field(default_factory=list)  # {"anchors", "t2i_R@10", "chance"}
    anchors_needed: int | None = None
    verdict: str = ""
    usable: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def anchor_curve(image: np.ndarray, text: np.ndarray, held_out: int = 500, k: int = 800,
                 p: float = 8.0, seed: int = 0, sizes: list[int] | None = None) -> list[dict]:
    """Text->image R@10 among ``held_out`` held-out pairs, with ASIF relative vectors over
    growing random subsets of the other pairs as anchors."""
    from asif_index.anchors import AnchorManifest, AnchorSet
    from asif_index.search import rank, recall_at

    x, y = _pair_check(image, text)
    n = len(x)
    held_out = min(held_out, n // 4)
    if held_out < 10:
        raise ShapeError(f"{n} pairs: too few to hold out queries for a retrieval curve "
                         "(need at least 40)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    q, pool = order[:held_out], order[held_out:]
    if sizes is None:
        sizes, m = [], 250
        while m < len(pool):
            sizes.append(m)
            m *= 2
        sizes.append(len(pool))
    out = []
    for m in sizes:
        m = min(m, len(pool))
        a = AnchorSet(AnchorManifest("image", "text", x.shape[1], y.shape[1], k=k, p=p))
        a.add(x[pool[:m]].astype(np.float32), y[pool[:m]].astype(np.float32))
        qt = a.project(y[q].astype(np.float32), "text", k=min(k, m))
        iv = a.project(x[q].astype(np.float32), "image", k=min(k, m))
        _, ranked = rank(qt, iv, 10)
        r = recall_at(ranked, [{i} for i in range(held_out)], ks=(10,))["R@10"]
        out.append({"anchors": m, "t2i_R@10": r, "chance": 10 / held_out})
    return out


def diagnose(image: np.ndarray, text: np.ndarray, sample: int = 2000, shuffles: int = 10,
             knn: int = 10, seed: int = 0, curve: bool = True) -> Diagnosis:
    """CKA (linear, RBF), mutual k-NN, their shuffled-pairs baselines, a retrieval curve over
    the number of anchors, and a verdict.

    image [n, d_i], text [n, d_t]: row i of each is pair i (e.g. an anchor set). The kernel
    statistics use a random ``sample`` of rows (RBF CKA is n x n)."""
    t0 = time.perf_counter()
    x, y = _pair_check(image, text, "diagnose")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(x), min(sample, len(x)), replace=False)
    xs, ys = x[pick], y[pick]
    knn = max(1, min(knn, (len(xs) - 1) // 4))  # a neighbourhood, not most of a small set
    lin, rbf, mk = linear_cka(xs, ys), rbf_cka(xs, ys), mutual_knn(xs, ys, knn)
    shuf = [linear_cka(xs, ys[rng.permutation(len(ys))]) for _ in range(shuffles)]
    perm = rng.permutation(len(ys))
    s_rbf, s_mk = rbf_cka(xs, ys[perm]), mutual_knn(xs, ys[perm], knn)
    sd = float(np.std(shuf)) or 1e-12
    z = (lin - float(np.mean(shuf))) / sd
    d = Diagnosis(len(x), len(xs), lin, rbf, mk, float(np.mean(shuf)), sd, s_rbf, s_mk, z)
    rising = False
    if curve and len(x) >= 40:
        d.retrieval = anchor_curve(x, y, seed=seed)
        best = max(r["t2i_R@10"] for r in d.retrieval)
        d.anchors_needed = next(r["anchors"] for r in d.retrieval
                                if r["t2i_R@10"] >= 0.9 * best)
        rising = (len(d.retrieval) > 1
                  and d.retrieval[-1]["t2i_R@10"] > 1.05 * d.retrieval[-2]["t2i_R@10"])
    related = z >= 5 and mk >= 3 * max(s_mk, knn / len(xs))
    if not related:
        d.verdict = ("unusable: the two encoders' geometries are unrelated on these pairs "
                     f"(linear CKA {lin:.3f} against {np.mean(shuf):.3f} shuffled, z = {z:.1f}; "
                     f"mutual {knn}-NN {mk:.3f} against {s_mk:.3f}). Check that row i of each "
                     "side is the same pair, and that each encoder is the one the index expects.")
    elif d.retrieval and d.retrieval[-1]["t2i_R@10"] < 3 * d.retrieval[-1]["chance"]:
        d.verdict = ("weak: the spaces are related (CKA z = {:.1f}) but ASIF retrieval with all "
                     "{} pairs reaches only R@10 {:.3f} (chance {:.3f}); add anchors or use "
                     "stronger encoders.".format(z, d.retrieval[-1]["anchors"],
                                                 d.retrieval[-1]["t2i_R@10"],
                                                 d.retrieval[-1]["chance"]))
    else:
        d.usable = True
        need = (f" About {d.anchors_needed} anchors reach 90% of the retrieval measured with "
                f"{d.retrieval[-1]['anchors']}" + ("; it still rises with more anchors, so add "
                                                   "them if you can." if rising else ".")
                if d.retrieval else "")
        d.verdict = (f"usable: the spaces share structure (linear CKA {lin:.3f} against "
                     f"{np.mean(shuf):.3f} shuffled, z = {z:.0f}; mutual {knn}-NN {mk:.3f} "
                     f"against {s_mk:.3f}).{need}")
    d.seconds = time.perf_counter() - t0
    return d


# ------------------------------------------------------------------ unpaired matching
def _assign(score: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-score)
    out = np.empty(len(score), np.int64)
    out[rows] = cols
    return out


def match_unpaired(image: np.ndarray, text: np.ndarray, seed_image: np.ndarray,
                   seed_text: np.ndarray, method: MatchMethod = "qap", restarts: int = 3,
                   k: int = 800, p: float = 8.0, seed: int = 0,
                   center: bool = True) -> np.ndarray:
    """Pair ``image`` [n, d_i] with ``text`` [n, d_t] (no pairing known) using seed pairs
    ``seed_image`` [s, d_i] / ``seed_text`` [s, d_t] (row j of each is pair j).

    Returns int64 [n]: for image i, the text row it is matched to (a permutation, except for
    ``asif-nn``, where each image takes its nearest text independently).

    Methods: ``qap``: seeded graph matching of the two cosine-similarity graphs over seeds and
    items (scipy's FAQ with the seeds as a partial match, ``restarts`` random starts, the best
    objective kept); ``local-cka``: each item's centred similarity profile over the seeds in
    its own space, compared across spaces by correlation (a localized CKA), then a linear
    assignment; ``asif-lap``: ASIF relative vectors over the seeds (top-k, power p), dot
    products, then a linear assignment; ``asif-nn``: the same scores, nearest text per image.
    ``center``: subtract each space's seed mean first (encoders' outputs share a large common
    component that drowns the pair-specific similarities).
    """
    if method not in MATCH_METHODS:
        raise ConfigError(f"method must be one of {', '.join(MATCH_METHODS)}; got '{method}'")
    x, y = np.asarray(image, np.float64), np.asarray(text, np.float64)
    sx, sy = _pair_check(seed_image, seed_text, "seed pairs")
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ShapeError(f"image {x.shape} and text {y.shape}: both sides need the same number "
                         "of rows (one caption per image, order unknown)")
    if x.shape[1] != sx.shape[1] or y.shape[1] != sy.shape[1]:
        raise ShapeError(f"seed dimensions {sx.shape[1]}/{sy.shape[1]} differ from the items' "
                         f"{x.shape[1]}/{y.shape[1]}: embed both with the same encoders")
    if center:
        mx, my = sx.mean(0), sy.mean(0)
        x, y, sx, sy = x - mx, y - my, sx - mx, sy - my
    x, y, sx, sy = _unit(x), _unit(y), _unit(sx), _unit(sy)
    if method == "qap":
        from scipy.optimize import quadratic_assignment

        s, n = len(sx), len(x)
        a = np.vstack([sx, x])
        b = np.vstack([sy, y])
        ga, gb = a @ a.T, b @ b.T
        np.fill_diagonal(ga, 0)
        np.fill_diagonal(gb, 0)
        seeds = np.column_stack([np.arange(s), np.arange(s)])
        rng = np.random.default_rng(seed)
        best, best_fun = None, -np.inf
        for r in range(max(1, restarts)):
            res = quadratic_assignment(ga, gb, method="faq", options={
                "maximize": True, "partial_match": seeds,
                "P0": "barycenter" if r == 0 else "randomized", "rng": rng})
            if res.fun > best_fun:
                best, best_fun = res.col_ind, res.fun
        return np.asarray(best[s:s + n] - s, np.int64)
    if method == "local-cka":
        px = x @ sx.T
        py = y @ sy.T
        px = _unit(px - px.mean(1, keepdims=True))
        py = _unit(py - py.mean(1, keepdims=True))
        return _assign(px @ py.T)
    from asif_index.anchors import AnchorManifest, AnchorSet
    from asif_index.search import score_matrix

    a = AnchorSet(AnchorManifest("image", "text", sx.shape[1], sy.shape[1], k=k, p=p))
    a.add(sx.astype(np.float32), sy.astype(np.float32))
    kk = min(k, len(sx))
    score = score_matrix(a.project(x.astype(np.float32), "image", k=kk),
                         a.project(y.astype(np.float32), "text", k=kk))
    return np.argmax(score, 1).astype(np.int64) if method == "asif-nn" else _assign(score)


def matching_accuracy(image: np.ndarray, text: np.ndarray, seed_image: np.ndarray,
                      seed_text: np.ndarray, methods=MATCH_METHODS, **kw) -> list[dict]:
    """Each method on pairs whose true pairing is the identity (shuffled before matching, so
    no method can profit from the order): share matched correctly, and seconds."""
    rng = np.random.default_rng(kw.pop("seed", 0))
    perm = rng.permutation(len(text))
    out = []
    for m in methods:
        t = time.perf_counter()
        got = match_unpaired(image, np.asarray(text)[perm], seed_image, seed_text, m, **kw)
        # text row got[i] of the shuffled batch is original caption perm[got[i]]
        out.append({"method": m, "pairs": len(image), "seeds": len(seed_image),
                    "accuracy": float(np.mean(perm[got] == np.arange(len(image)))),
                    "seconds": time.perf_counter() - t})
    return out


def local_cka_scores(query_sims: np.ndarray, anchor_rows: Callable[[np.ndarray], np.ndarray],
                     candidates: list[tuple[np.ndarray, np.ndarray]], p: float, m: int = 50
                     ) -> np.ndarray:
    """Localized-CKA agreement between a query and database candidates of the other modality,
    from what the database stores.

    query_sims: float [N] the query's cosine to each anchor of its own modality (anchor row
    order); anchor_rows: anchor ids -> rows of ``query_sims``; candidates: each candidate's
    stored relative vector (anchor ids [k'], values [k']); p: the power they were stored with.
    The neighbourhood is the candidate's ``m`` strongest anchors, where its similarities are
    known exactly (stored value to the power 1/p is the cosine up to the vector's norm); the
    query's similarities to the same anchor pairs come from its own side. Returns float [C]:
    the correlation of the two profiles (the centred alignment of the two local kernels' rows
    at the candidate), 0 for a flat profile.
    """
    q = np.asarray(query_sims, np.float64)
    if q.ndim != 1:
        raise ShapeError(f"query_sims must be [N] over the anchors; got {q.shape}")
    out = np.zeros(len(candidates))
    for c, (ci, cv) in enumerate(candidates):
        ci, cv = np.asarray(ci), np.asarray(cv, np.float64)
        order = np.argsort(-cv)[:m]
        order = order[cv[order] > 0]
        if len(order) < 3:
            continue
        prof = cv[order] ** (1.0 / p)
        qp = q[anchor_rows(ci[order])]
        prof, qp = prof - prof.mean(), qp - qp.mean()
        den = np.linalg.norm(prof) * np.linalg.norm(qp)
        out[c] = float(prof @ qp / den) if den > 0 else 0.0
    return out


def rerank_local_cka(base_scores: np.ndarray, local: np.ndarray, weight: float
                     ) -> np.ndarray:
    """Order (positions into the candidates) by base score + ``weight`` x local CKA, ties by
    the database's order."""
    s = np.asarray(base_scores, np.float64) + weight * np.asarray(local, np.float64)
    return np.lexsort((np.arange(len(s)), -s))
