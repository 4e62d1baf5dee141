"""Zero-shot evaluation on real data: CIFAR-10 classification and Flickr8k retrieval.

Anchors: Flickr8k train pairs (each caption with its image, 30,000 pairs). Reports the
published recipe (k=800, p=8), the chosen default recipe (``tuned``) and a grid of variants
as JSON and a Markdown table.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from asif_index.anchors import AnchorManifest, AnchorPayload, AnchorSet
from asif_index.datasets import flickr8k, read_class_folder
from asif_index.encoders.base import Encoder
from asif_index.errors import ConfigError
from asif_index.recipe import Recipe
from asif_index.search import (hits_at, prompts, recall_from_scores, score_matrix,
                                template_scores)

CIFAR_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a picture of a {}.",
    "a close-up photo of a {}.",
)


@dataclass
class EvalData:
    anchors: AnchorSet
    cifar_img: np.ndarray
    cifar_y: np.ndarray
    cifar_classes: list[str]
    dev_img: np.ndarray
    dev_txt: np.ndarray
    dev_txt_img: np.ndarray  # image position of each dev caption
    timings: dict = field(default_factory=dict)
    # one anchor per train image: its embedding and the mean of its captions' embeddings
    # (Flickr8k lists every image five times among the pairs)
    grouped: AnchorSet | None = None
    dev_captions: list[str] | None = None  # the dev captions' text (image-to-image relevance)

    def dev_half(self) -> np.ndarray:
        """Each dev photo's half (:func:`halves`), int8 [n_dev_images]."""
        return halves(np.zeros(len(self.dev_img), np.int64))

    def cifar_half(self) -> np.ndarray:
        """Each CIFAR-10 image's half, split within its class, int8 [n_cifar]."""
        return halves(self.cifar_y)


def _take(seq, limit: int | None, seed: int = 0):
    if limit is None or limit >= len(seq):
        return list(seq)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(seq), limit, replace=False))
    return [seq[i] for i in pick]


# Defaults are chosen on one half of the dev data and reported on the other, so no default is
# chosen on the figures it is reported with: Flickr8k dev split by photo (a photo's captions go
# with it; the searched collection stays the whole dev split), CIFAR-10 split within each
# class. The split is a fixed seeded permutation, the same on every machine.
HALVES = ("select", "confirm")
SPLIT_SEED = 20261203


def halves(groups: np.ndarray) -> np.ndarray:
    """0 (select) or 1 (confirm) per position: within each group value (a class; one group
    for photos), a seeded permutation's first half selects. int8 [n]."""
    groups = np.asarray(groups)
    out = np.zeros(len(groups), np.int8)
    rng = np.random.default_rng(SPLIT_SEED)
    for g in np.unique(groups):
        pos = np.flatnonzero(groups == g)
        perm = pos[rng.permutation(len(pos))]
        out[perm[len(pos) // 2:]] = 1
    return out


def load_eval_data(
    data_dir: Path,
    image_encoder: Encoder,
    text_encoder: Encoder,
    limit_anchor_images: int | None = None,
    limit_cifar: int | None = None,
    limit_dev_images: int | None = None,
    log=print,
    progress: Callable[[str], Callable[[int, int], None] | None] | None = None,
) -> EvalData:
    """Embed (through the encoders' cache) everything the evaluation needs.
    progress: given a stage's name ("anchor images", ...), returns the (done, total) callback
    that stage's encoder reports to (the command line shows a bar with an ETA per stage)."""
    stage = progress or (lambda name: None)
    fl = data_dir / "flickr8k"
    cf = data_dir / "cifar10-test"
    if not fl.is_dir() or not cf.is_dir():
        raise ConfigError(f"'{data_dir}' lacks flickr8k/ or cifar10-test/ (see its README)")
    train, dev = flickr8k(fl)
    timings = {}

    def by_image(rows):
        d: dict = {}
        for r in rows:
            d.setdefault(r.image, []).append(r.caption)
        return d

    tr = by_image(train)
    tr_imgs = _take(sorted(tr), limit_anchor_images)
    t0 = time.perf_counter()
    log(f"embedding {len(tr_imgs)} anchor images ...")
    a_img = image_encoder.encode(tr_imgs, stage("anchor images"))
    caps, cap_img = [], []
    for i, im in enumerate(tr_imgs):
        for c in tr[im]:
            caps.append(c)
            cap_img.append(i)
    log(f"embedding {len(caps)} anchor captions ...")
    a_txt = text_encoder.encode(caps, stage("anchor captions"))
    timings["anchors_s"] = time.perf_counter() - t0
    anchors = AnchorSet(
        AnchorManifest(image_encoder.name, text_encoder.name, image_encoder.dim, text_encoder.dim)
    )
    anchors.add(
        a_img[cap_img],
        a_txt,
        [AnchorPayload(c, str(tr_imgs[i].name), "flickr8k-train") for c, i in zip(caps, cap_img)],
    )
    g_txt = np.zeros((len(tr_imgs), a_txt.shape[1]), np.float64)
    np.add.at(g_txt, np.asarray(cap_img), a_txt)
    g_txt /= np.linalg.norm(g_txt, axis=1, keepdims=True)
    grouped = AnchorSet(copy.deepcopy(anchors.manifest))
    grouped.manifest.version = 0
    grouped.add(a_img, g_txt.astype(np.float32),
                [AnchorPayload(tr[im][0], str(im.name), "flickr8k-train-grouped") for im in tr_imgs])
    dv = by_image(dev)
    dv_imgs = _take(sorted(dv), limit_dev_images)
    t0 = time.perf_counter()
    log(f"embedding {len(dv_imgs)} dev images and their captions ...")
    dev_img = image_encoder.encode(dv_imgs, stage("dev images"))
    dcaps, dcap_img = [], []
    for i, im in enumerate(dv_imgs):
        for c in dv[im]:
            dcaps.append(c)
            dcap_img.append(i)
    dev_txt = text_encoder.encode(dcaps, stage("dev captions"))
    timings["dev_s"] = time.perf_counter() - t0
    items = _take(read_class_folder(cf), limit_cifar)
    classes = sorted({c for _, c in items})
    t0 = time.perf_counter()
    log(f"embedding {len(items)} CIFAR-10 test images ...")
    cifar_img = image_encoder.encode([p for p, _ in items], stage("CIFAR-10 images"))
    timings["cifar_s"] = time.perf_counter() - t0
    y = np.array([classes.index(c) for _, c in items])
    return EvalData(anchors, cifar_img, y, classes, dev_img, dev_txt, np.array(dcap_img), timings,
                    grouped, dcaps)


def evaluate_point(data: EvalData, text_encoder: Encoder, k: int, p: float,
                   recipe: Recipe | None = None, grouped: bool = False) -> dict:
    """All metrics at one (recipe, k, p); the recipe's per-modality k/p override (k, p) on
    their side, and its ``qbnorm`` re-ranks both retrieval directions (exactly: over every
    dev item, which the database's top 100 reproduce). ``score`` sums both tasks: CIFAR-10
    accuracy (mean over templates) plus the mean of text->image and image->text R@10 on
    Flickr8k dev. The same metrics per half of the dev data (:data:`HALVES`) are under
    ``"select"`` and ``"confirm"``: queries of that half, searched against the whole dev
    split."""
    recipe = recipe or Recipe()
    base = data.grouped if grouped else data.anchors
    k = min(k, len(base))
    anchors = base.with_recipe(recipe, k, p)
    res: dict = {"recipe": recipe.name + (" /grouped" if grouped else ""), "k": k, "p": p,
                 "anchors": len(base), "image_encoder": base.manifest.image_encoder,
                 "text_encoder": base.manifest.text_encoder}
    correct = cifar_correct(data, text_encoder, anchors)
    res.update({f"cifar10_acc_{red}": float(c.mean()) for red, c in correct.items()})
    t0 = time.perf_counter()
    qt = anchors.project(data.dev_txt, "text")
    iv = anchors.project(data.dev_img, "image")
    res["project_s"] = time.perf_counter() - t0
    s = score_matrix(qt, iv)
    hits = retrieval_hits(*_qbnormed(anchors, s, qt, iv, recipe.qbnorm), data.dev_txt_img)
    res.update({key: float(h.mean()) for key, h in hits.items()})
    res["score"] = res["cifar10_acc_mean"] + (res["t2i_R@10"] + res["i2t_R@10"]) / 2
    img_half, cif_half = data.dev_half(), data.cifar_half()
    rows_of = {"t2i": img_half[data.dev_txt_img], "i2t": img_half}
    for h, name in enumerate(HALVES):
        part = {f"cifar10_acc_{red}": float(c[cif_half == h].mean()) for red, c in correct.items()}
        part.update({key: float(v[rows_of[key[:3]] == h].mean()) for key, v in hits.items()})
        part["score"] = part["cifar10_acc_mean"] + (part["t2i_R@10"] + part["i2t_R@10"]) / 2
        res[name] = part
    return res


def cifar_correct(data: EvalData, text_encoder: Encoder, anchors: AnchorSet
                  ) -> dict[str, np.ndarray]:
    """Per CIFAR-10 image, whether zero-shot classification is right (bool [n]), with the
    templates' scores averaged (``mean``) and with their best (``max``); images projected once."""
    ptxt = text_encoder.encode(prompts(data.cifar_classes, CIFAR_TEMPLATES))
    s = template_scores(anchors, data.cifar_img, ptxt, len(data.cifar_classes),
                        len(CIFAR_TEMPLATES))
    return {red: getattr(s, red)(2).argmax(1) == data.cifar_y for red in ("mean", "max")}


def cifar_accuracies(data: EvalData, text_encoder: Encoder, anchors: AnchorSet
                     ) -> dict[str, float]:
    """CIFAR-10 zero-shot accuracy with the templates' scores averaged (``cifar10_acc_mean``)
    and with their best (``cifar10_acc_max``), the images projected once."""
    return {f"cifar10_acc_{red}": float(c.mean())
            for red, c in cifar_correct(data, text_encoder, anchors).items()}


def _qbnormed(anchors: AnchorSet, s: np.ndarray, qt, iv, temperature: float | None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(text->image, image->text) score matrices from s [captions, photos], re-ranked by
    query-bank normalisation at ``temperature`` (None: as they are)."""
    if temperature is None:
        return s, s.T
    from asif_index.methods.qbnorm import QueryBank

    s = s.astype(np.float64)
    return (QueryBank(anchors, "text").rescore_matrix(s, iv, temperature),
            QueryBank(anchors, "image").rescore_matrix(s.T, qt, temperature))


def retrieval_hits(t2i: np.ndarray, i2t: np.ndarray, caption_image: np.ndarray,
                   ks=(1, 5, 10)) -> dict[str, np.ndarray]:
    """Per query, whether its top k holds a relevant item (bool [Q]), keyed like
    :func:`retrieval_recalls`; averaging a key over any subset of queries gives its R@k."""
    rel_t = [{int(i)} for i in caption_image]
    rel_i = [set(np.flatnonzero(caption_image == i).tolist()) for i in range(t2i.shape[1])]
    out = {}
    for name, sc, rel in (("t2i", t2i, rel_t), ("i2t", i2t, rel_i)):
        top = np.argsort(-sc, axis=1, kind="stable")[:, :max(ks)]  # as recall_from_scores
        out.update({f"{name}_{m}": h for m, h in hits_at(top, rel, ks).items()})
    return out


def retrieval_recalls(t2i: np.ndarray, i2t: np.ndarray, caption_image: np.ndarray
                      ) -> dict[str, float]:
    """Flickr8k dev R@1/5/10 both ways from score matrices t2i [captions, photos] and i2t
    [photos, captions]; ``caption_image``: each caption's photo. Ties rank by position, as
    in :func:`asif_index.search.rank`."""
    return {key: float(h.mean()) for key, h in retrieval_hits(t2i, i2t, caption_image).items()}


def qbnorm_grid(data: EvalData, text_encoder: Encoder, recipes: Sequence[tuple],
                temperatures: Sequence[float], log=print) -> list[dict]:
    """Query-bank normalisation (:mod:`asif_index.methods.qbnorm`) against each recipe's plain
    ranking. recipes: (Recipe, k, p) points; each row is one (point, temperature or None):
    CIFAR-10 (which the correction leaves alone: it re-ranks items for one query, and a
    classification ranks classes for one image), Flickr8k dev R@1/5/10 both ways over the
    whole dev split (the exact path: the database's top 100, re-ranked, give the same
    lists), and ``score`` as :func:`evaluate_point`'s."""
    from asif_index.methods.qbnorm import QueryBank
    from asif_index.methods.unified import image_relevance

    caps_of = [set(np.flatnonzero(data.dev_txt_img == i).tolist()) for i in range(len(data.dev_img))]
    t2t_rel = [caps_of[int(i)] - {t} for t, i in enumerate(data.dev_txt_img)]
    i2i_rel = None
    if data.dev_captions is not None:
        i2i_rel = image_relevance([[data.dev_captions[t] for t in sorted(c)] for c in caps_of])
    rows = []
    for recipe, k, p in recipes:
        k = min(k, len(data.anchors))
        anchors = data.anchors.with_recipe(recipe, k, p)
        cifar10 = cifar_accuracies(data, text_encoder, anchors)["cifar10_acc_mean"]
        qt = anchors.project(data.dev_txt, "text")
        iv = anchors.project(data.dev_img, "image")
        s = score_matrix(qt, iv).astype(np.float64)
        tt, ii = score_matrix(qt, qt).astype(np.float64), score_matrix(iv, iv).astype(np.float64)
        banks = {m: QueryBank(anchors, m) for m in ("text", "image")}
        for t in [None, *temperatures]:
            row = {"recipe": recipe.name, "k": k, "p": p, "temperature": t,
                   "bank": len(banks["text"]), "cifar10": cifar10}
            st = s if t is None else banks["text"].rescore_matrix(s, iv, t)
            si = s.T if t is None else banks["image"].rescore_matrix(s.T, qt, t)
            row.update(retrieval_recalls(st, si, data.dev_txt_img))
            row["score"] = row["cifar10"] + (row["t2i_R@10"] + row["i2t_R@10"]) / 2
            # same-modality search (the query left out), which the index leaves plain
            stt = tt if t is None else banks["text"].rescore_matrix(tt, qt, t)
            row["t2t_R@10"] = _recall10(stt, t2t_rel)
            if i2i_rel is not None:
                sii = ii if t is None else banks["image"].rescore_matrix(ii, iv, t)
                q = [j for j in range(len(i2i_rel)) if i2i_rel[j]]
                row["i2i_R@10"] = _recall10(sii, i2i_rel, q)
            rows.append(row)
            log(f"{row['recipe']} k={row['k']} p={p:g} T={t}: cifar10={row['cifar10']:.4f} "
                f"t2i R@10={row['t2i_R@10']:.3f} i2t R@10={row['i2t_R@10']:.3f} "
                f"score={row['score']:.4f}")
    return rows


def _recall10(scores: np.ndarray, relevant: Sequence[set], rows: Sequence[int] | None = None
              ) -> float:
    """R@10 of the rows of ``scores`` [Q, N] (each query itself excluded: Q == N)."""
    rows = list(range(len(scores))) if rows is None else list(rows)
    sc = scores[rows].copy()
    sc[np.arange(len(rows)), rows] = -np.inf
    return recall_from_scores(sc, [relevant[r] for r in rows], (10,))["R@10"]


def run_evaluation(
    data: EvalData,
    text_encoder: Encoder,
    ks=(100, 400, 800, 1600, 3200),
    ps=(1.0, 4.0, 8.0, 12.0),
    log=print,
    recipes: Sequence[Recipe] = (Recipe(),),
    extra_points: Sequence[tuple] = (),
) -> dict:
    """Every recipe over the k x p grid, then ``extra_points`` (recipe, k, p[, grouped]),
    e.g. a sweep of per-modality settings, or anchors grouped per image. ``best`` is the
    point with the highest ``score``; ``default`` the published recipe at k=800, p=8 (the
    reference); ``chosen`` the default recipe of a new index
    (:data:`asif_index.recipe.DEFAULT`) at k=800, p=8, when the points include it."""
    from asif_index.recipe import DEFAULT as DEFAULT_RECIPE

    n = len(data.anchors)
    grid = []
    points = [(r, k, p, False) for r in recipes for k in ks for p in ps] + \
        [tuple(x) + (False,) * (4 - len(x)) for x in extra_points]
    t0 = time.perf_counter()
    for j, (rec, k, p, grouped) in enumerate(points, 1):
        r = evaluate_point(data, text_encoder, min(k, n), p, rec, grouped)
        left = (time.perf_counter() - t0) / j * (len(points) - j)
        log(
            f"[{j}/{len(points)}, ~{left:.0f}s left] {r['recipe']} k={r['k']:5d} p={p:4.1f}  "
            f"cifar10={r['cifar10_acc_mean']:.4f}  t2i R@10={r['t2i_R@10']:.3f}  "
            f"i2t R@10={r['i2t_R@10']:.3f}  score={r['score']:.4f}"
        )
        grid.append(r)
    default = next((g for g in grid if g["recipe"] == "asif" and g["k"] == min(800, n)
                    and g["p"] == 8.0), None)
    # chosen on the select half only; the confirm half reports it
    best = max(grid, key=lambda g: g["select"]["score"]) if grid else None
    chosen = next((g for g in grid if g["recipe"] == DEFAULT_RECIPE.name
                   and g["k"] == min(800, n) and g["p"] == 8.0), None)
    return {
        "anchors": n,
        "cifar_images": int(len(data.cifar_y)),
        "dev_images": int(len(data.dev_img)),
        "dev_captions": int(len(data.dev_txt)),
        "encoders": {"image": data.anchors.manifest.image_encoder,
                     "text": data.anchors.manifest.text_encoder},
        "chance_cifar10": 1.0 / len(data.cifar_classes),
        "default": default,
        "chosen": chosen,
        "best": best,
        "configurations": len(grid),
        "grid": grid,
        "timings": data.timings,
    }


def markdown_table(result: dict) -> str:
    by = result.get("produced_by")
    head = []
    if by:
        emb = ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in by["embedding_s"].items())
        head = ["# Evaluation (real data)", "",
                f"Written by `{by['command']}` on {by['date']} ({by['machine']}); embedding "
                f"time this run: {emb} (the embedding cache makes re-runs fast).", ""]
    lines = head + [
        f"Anchors: {result['anchors']} Flickr8k train pairs; CIFAR-10 test images: "
        f"{result['cifar_images']} (chance {result['chance_cifar10']:.2f}); Flickr8k dev: "
        f"{result['dev_images']} images, {result['dev_captions']} captions. Encoders of the "
        f"recipe grid: {result['encoders']['image']} + {result['encoders']['text']}"
        + (" (other encoders and ensembles: the last section)." if result.get("encoder_sets")
           else "."),
        "",
        "",
        f"{result.get('configurations', len(result['grid']))} configurations. score = CIFAR-10 "
        "accuracy (mean over templates) + mean of T2I and I2T R@10; the published ASIF recipe "
        "is `asif`. Every figure is over all the dev data; `select` and `confirm` are the "
        "score on each half (`evaluation.HALVES`: Flickr8k dev queries by photo, CIFAR-10 "
        "within each class, seeded): choices are made on `select` and reported on `confirm`.",
        "",
        "| recipe | k | p | CIFAR-10 acc (mean tmpl) | CIFAR-10 acc (max tmpl) | T2I R@1 "
        "| T2I R@5 | T2I R@10 | I2T R@1 | I2T R@5 | I2T R@10 | score | select | confirm |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    def mark(g: dict) -> str:
        return (" **(default)**" if g == result.get("chosen")
                else " (published)" if g == result.get("default") else "")

    for g in result["grid"]:
        lines.append(
            f"| {g.get('recipe', 'asif')}{mark(g)} | {g['k']} | {g['p']:g} | {g['cifar10_acc_mean']:.4f} "
            f"| {g['cifar10_acc_max']:.4f} | {g['t2i_R@1']:.3f} | {g['t2i_R@5']:.3f} "
            f"| {g['t2i_R@10']:.3f} | {g['i2t_R@1']:.3f} | {g['i2t_R@5']:.3f} "
            f"| {g['i2t_R@10']:.3f} | {g.get('score', 0):.4f} "
            f"| {g.get('select', {}).get('score', 0):.4f} "
            f"| {g.get('confirm', {}).get('score', 0):.4f} |"
        )
    d, b, c = result.get("default"), result.get("best"), result.get("chosen")

    def versus(g: dict) -> str:
        return (f"CIFAR-10 {g['cifar10_acc_mean']:.4f} "
                f"({100 * (g['cifar10_acc_mean'] - d['cifar10_acc_mean']):+.1f} points), "
                f"T2I R@10 {g['t2i_R@10']:.3f} ({100 * (g['t2i_R@10'] - d['t2i_R@10']):+.1f}), "
                f"I2T R@10 {g['i2t_R@10']:.3f} ({100 * (g['i2t_R@10'] - d['i2t_R@10']):+.1f}), "
                f"score {g['score']:.4f}")

    if d and b:
        lines += ["", f"Published recipe (asif, k=800, p=8): CIFAR-10 {d['cifar10_acc_mean']:.4f}, "
                  f"T2I R@10 {d['t2i_R@10']:.3f}, I2T R@10 {d['i2t_R@10']:.3f}, score "
                  f"{d['score']:.4f}. Best by the select half's score: {b['recipe']} at "
                  f"k={b['k']}, p={b['p']:g}: {versus(b)}; confirm half "
                  f"{b['confirm']['score']:.4f} against the published recipe's "
                  f"{d['confirm']['score']:.4f}."]
    if d and c:
        # grouped anchors change what an anchor is (one per photo), so they are a different
        # anchor set, not a recipe an index can switch to
        live = max((g for g in result["grid"] if "/grouped" not in g["recipe"]),
                   key=lambda g: g["select"]["score"])
        why = ("the best point by the select half's score among the recipes over the same "
               "anchors" if live == c
               else f"the best point by the select half's score over the same anchors is "
               f"{live['recipe']} at k={live['k']}, p={live['p']:g} "
               f"({live['select']['score']:.4f})")
        lines += ["", f"**Default recipe: `{c['recipe']}`** (what `init` and `Index.create` use; "
                  f"`asif` names the published recipe): {versus(c)} against the published "
                  f"recipe; {why}. On the confirm half: score {c['confirm']['score']:.4f} "
                  f"against {d['confirm']['score']:.4f}; every configuration tried is listed "
                  "above."]
    if result.get("encoder_sets"):
        lines += ["", encoder_table(result["encoder_sets"])]
    return "\n".join(lines) + "\n"


def encoder_table(rows: list[dict]) -> str:
    """The encoder sets compared (each row an :func:`evaluate_point` result with its image and
    text encoder), each half apart; the default marked (``default: True``)."""
    out = ["### Encoders and ensembles", "",
           "Each image encoder (or ensemble, `A+B`: their cosine rows mixed before top-k, "
           "`asif_index.encoders.ensemble`) with the same 30,000 anchor pairs and the text "
           "encoder named; chosen by the select half, reported on both.", "",
           "| image encoder | text encoder | recipe | CIFAR-10 select | CIFAR-10 confirm "
           "| T2I R@10 select | T2I R@10 confirm | I2T R@10 select | I2T R@10 confirm "
           "| score select | score confirm |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["select"], r["confirm"]
        mark = " **(default)**" if r.get("default") else ""
        out.append(f"| {r['image_spec']}{mark} | {r['text_spec']} | {r['recipe']} "
                   f"| {a['cifar10_acc_mean']:.4f} | {b['cifar10_acc_mean']:.4f} "
                   f"| {a['t2i_R@10']:.3f} | {b['t2i_R@10']:.3f} | {a['i2t_R@10']:.3f} "
                   f"| {b['i2t_R@10']:.3f} | {a['score']:.4f} | {b['score']:.4f} |")
    best = max(rows, key=lambda r: r["select"]["score"])
    out += ["", f"Best by the select half's score: {best['image_spec']} with {best['recipe']} "
            f"({best['select']['score']:.4f}; confirm {best['confirm']['score']:.4f})."]
    default = next((r for r in rows if r.get("default")), None)
    base = next((r for r in rows if r["image_spec"] == "efficientnet-lite0"
                 and r["recipe"] == "tuned"), None)
    if default is not None and base is not None and default is not base:
        a, b = default["confirm"], base["confirm"]
        out += ["", f"The default image encoder ({default['image_spec']}, {default['recipe']}) "
                f"against the light one (efficientnet-lite0, tuned), on the confirm half: "
                f"CIFAR-10 {a['cifar10_acc_mean']:.4f} "
                f"({100 * (a['cifar10_acc_mean'] - b['cifar10_acc_mean']):+.1f} points), "
                f"T2I R@10 {a['t2i_R@10']:.3f} ({100 * (a['t2i_R@10'] - b['t2i_R@10']):+.1f}), "
                f"I2T R@10 {a['i2t_R@10']:.3f} ({100 * (a['i2t_R@10'] - b['i2t_R@10']):+.1f}). "
                "What each costs (encode and projection rates, bytes, search latency): "
                "docs/benchmarks.md, section 13."]
    return "\n".join(out)


def write_report(result: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j = out_dir / "evaluation.json"
    m = out_dir / "evaluation.md"
    j.write_text(json.dumps(result, indent=1))
    m.write_text(markdown_table(result))
    return j, m


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- section:{name} -->", f"<!-- /section:{name} -->"


def sections_of(page: str) -> dict[str, str]:
    """The marked sections of a report page (each written by its own command), by name."""
    out = {}
    for start in page.split("<!-- section:")[1:]:
        name = start.split(" -->", 1)[0]
        begin, end = _markers(name)
        body = page.split(begin, 1)[1].split(end, 1)[0]
        out[name] = begin + body + end
    return out


def write_section(page: Path, name: str, markdown: str) -> Path:
    """Put ``markdown`` into ``page`` as the section ``name``, replacing that section's last
    version and leaving the rest of the page as it was (one page, several commands)."""
    begin, end = _markers(name)
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = page.read_text() if page.is_file() else ""
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    page.write_text(text)
    return page


def keep_sections(new_page: str, old_page: str) -> str:
    """``new_page`` followed by the sections other commands wrote into ``old_page``."""
    kept = [body for name, body in sections_of(old_page).items()
            if _markers(name)[0] not in new_page]
    return new_page.rstrip() + "".join("\n\n" + b for b in kept) + "\n"
