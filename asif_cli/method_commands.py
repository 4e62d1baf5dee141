"""The evaluation and research commands (``asif-index eval ...``, ``asif-index lab ...``) and
``train-text-classifier``: argument parsing and the runs; the docs sections they write are
formatted in :mod:`asif_index.reports`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from asif_cli.core_commands import _settings
from asif_index.reports import (
    doctor_markdown,
    match_markdown,
    qbnorm_markdown,
    rerank_markdown,
    text_classifier_markdown,
    unified_markdown,
)


def _flickr(args):
    """The encoders and Flickr8k's captions by photo: (image encoder, text encoder,
    {train photo: [captions]}, {dev photo: [captions]})."""
    from asif_index.datasets import flickr8k
    from asif_index.errors import ConfigError

    data = _data_dir(args)
    if data is None or not (data / "flickr8k").is_dir():
        raise ConfigError(f"no Flickr8k under '{data}': pass --data DIR (with flickr8k/) or "
                          "set ASIF_DATA")
    img_enc, txt_enc = _settings(args).encoders()
    train, dev = flickr8k(data / "flickr8k")

    def by_image(rows):
        d: dict = {}
        for r in rows:
            d.setdefault(r.image, []).append(r.caption)
        return d

    return img_enc, txt_enc, by_image(train), by_image(dev)


def _flickr_pairs(args):
    """Flickr8k train pairs (one caption per image) and dev pairs, through the encoders'
    cache: (train image [n, d_i], train text [n, d_t], dev image, dev text)."""
    img_enc, txt_enc, tr, dv = _flickr(args)
    ti, di = list(tr), list(dv)
    print(f"embedding {len(ti)} train and {len(di)} dev pairs (cached after the first run) ...",
          file=sys.stderr)
    return (img_enc.encode(ti), txt_enc.encode([tr[x][0] for x in ti]), img_enc.encode(di),
            txt_enc.encode([dv[x][0] for x in di]))


def _flickr_space(args, limit_anchor_images: int | None = None):
    """The Flickr8k train pairs as an anchor set (every caption, its photo repeated, as the
    published recipe), and the dev photos and captions: (anchors, dev image [n_i, d_i], dev
    text [n_t, d_t], dev text -> photo [n_t], captions per dev photo, dev photo paths)."""
    from asif_index.anchors import AnchorManifest, AnchorPayload, AnchorSet

    img_enc, txt_enc, tr, dv = _flickr(args)
    tr_imgs = sorted(tr)[:limit_anchor_images]
    caps = [(i, c) for i, im in enumerate(tr_imgs) for c in tr[im]]
    print(f"embedding {len(tr_imgs)} anchor photos, {len(caps)} captions and the dev split "
          "(cached after the first run) ...", file=sys.stderr)
    a_img = img_enc.encode(tr_imgs)
    a_txt = txt_enc.encode([c for _, c in caps])
    anchors = AnchorSet(AnchorManifest(img_enc.name, txt_enc.name, img_enc.dim, txt_enc.dim))
    rows = np.array([i for i, _ in caps])
    anchors.add(a_img[rows], a_txt, [AnchorPayload(c, str(tr_imgs[i].name), "flickr8k-train")
                                     for i, c in caps])
    dv_imgs = sorted(dv)
    d_caps = [(i, c) for i, im in enumerate(dv_imgs) for c in dv[im]]
    return (anchors, img_enc.encode(dv_imgs), txt_enc.encode([c for _, c in d_caps]),
            np.array([i for i, _ in d_caps]), [dv[im] for im in dv_imgs], dv_imgs,
            (img_enc, txt_enc))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def cmd_doctor(args) -> int:
    from asif_index.evaluation import write_section
    from asif_index.methods.encoder_match import diagnose

    if args.data:
        img, txt, _, _ = _flickr_pairs(args)
        what = (f"Flickr8k train pairs ({len(img)} images, one caption each), the default "
                "encoders; 'shuffled captions' pairs each image with another image's caption "
                "(a deliberately mismatched pair).")
    else:
        from asif_cli.db_commands import _open_readonly

        store, anchors = _open_readonly(args)
        img, txt = anchors.image, anchors.text
        what = f"The {len(anchors)} anchor pairs of index '{args.name or 'asif'}'."
    runs = {"real": diagnose(img, txt, sample=args.sample).to_dict()}
    if args.control:
        perm = np.random.default_rng(0).permutation(len(txt))
        runs["shuffled captions"] = diagnose(img, txt[perm], sample=args.sample,
                                             curve=False).to_dict()
    found = {"command": "asif-index " + " ".join(sys.argv[1:]), "what": what, "runs": runs}
    if args.json:
        print(json.dumps(found, indent=1))
    else:
        for label, d in runs.items():
            print(f"{label}: linear CKA {d['linear_cka']:.3f} (shuffled "
                  f"{d['shuffled_linear_cka']:.3f}, z {d['cka_z']:.0f}), RBF CKA "
                  f"{d['rbf_cka']:.3f}, mutual 10-NN {d['mutual_knn']:.3f} (shuffled "
                  f"{d['shuffled_mutual_knn']:.3f})")
            for r in d["retrieval"]:
                print(f"  {r['anchors']:>6} anchors: text->image R@10 {r['t2i_R@10']:.3f} "
                      f"(chance {r['chance']:.3f})")
            print(f"  {d['verdict']}")
    if args.docs:
        write_section(Path(args.docs), "doctor", doctor_markdown(found))
        print(f"wrote the 'doctor' section of {args.docs}", file=sys.stderr)
    return 0 if runs["real"]["usable"] else 1


def cmd_match(args) -> int:
    from asif_index.errors import ConfigError
    from asif_index.evaluation import write_section
    from asif_index.methods.encoder_match import MATCH_METHODS, matching_accuracy

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in MATCH_METHODS]
    if bad:
        raise ConfigError(f"unknown --methods {bad}; choose from {', '.join(MATCH_METHODS)}")
    ti, tc, di, dc = _flickr_pairs(args)
    sizes = args.sizes
    if max(sizes) > len(di) or args.seeds > len(ti):
        raise ConfigError(f"--sizes up to {len(di)} dev pairs and --seeds up to {len(ti)}")
    rng = np.random.default_rng(0)
    seeds = rng.choice(len(ti), args.seeds, replace=False)
    rows = []
    for n in sizes:
        pick = rng.choice(len(di), n, replace=False)
        for r in matching_accuracy(di[pick], dc[pick], ti[seeds], tc[seeds], methods,
                                   restarts=args.restarts):
            r["chance"] = 1 / n
            rows.append(r)
            print(f"{n:>5} pairs, {args.seeds} seeds, {r['method']:<9}: {_pct(r['accuracy'])} "
                  f"matched (chance {_pct(1 / n)}), {r['seconds']:.2f} s", flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    if args.docs:
        write_section(Path(args.docs), "match", match_markdown(
            rows, f"asif-index {' '.join(sys.argv[1:])}", args.seeds, args.restarts))
        print(f"wrote the 'match' section of {args.docs}", file=sys.stderr)
    return 0


POINTING_BOXES = Path(__file__).resolve().parent.parent / "asif_index" / "data" / \
    "pointing_flickr8k_dev.json"


def cmd_evaluate_unified(args) -> int:
    from asif_index.errors import ConfigError
    from asif_index.evaluation import write_section
    from asif_index.methods import locate as loc
    from asif_index.methods.unified import any_to_any, composition_curve, modality_gap

    anchors, di, dt, dti, caps, dv_imgs, (img_enc, txt_enc) = _flickr_space(
        args, args.limit_anchor_images)
    k, p = args.k or 800, args.p or 8.0
    t0 = time.perf_counter()
    iv = anchors.project(di, "image", k, p)
    tv = anchors.project(dt, "text", k, p)
    found = {"command": "asif-index " + " ".join(sys.argv[1:]), "anchors": len(anchors),
             "k": k, "p": p, "photos": len(di), "captions": len(dt)}
    found["any_to_any"] = any_to_any(iv, tv, dti, caps)
    found["gap"] = modality_gap(iv, tv)
    found["composition_queries"] = min(args.queries, len(di))
    found["composition"] = composition_curve(iv, tv, dti, args.weights, args.queries)
    print(f"any-to-any, gap and composition in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    boxes = Path(args.boxes) if args.boxes else POINTING_BOXES
    if args.pointing:
        if not boxes.is_file():
            raise ConfigError(f"no pointing-game boxes at '{boxes}' (--boxes FILE)")
        doc = json.loads(boxes.read_text())
        photos = doc["photos"][:args.pointing_photos]
        image_dir = _data_dir(args) / "flickr8k" / "images"  # _flickr_space checked it
        bg = anchors.project(txt_enc.encode(list(loc.BACKGROUND_PROMPTS)), "text", k, p)
        scale_sets = {"4": (0.6, 0.45, 0.3, 0.2), "3": (0.45, 0.3, 0.2), "2": (0.3, 0.2),
                      "big": (0.6, 0.45, 0.3)}
        print(f"pointing game on {len(photos)} photos (every crop of 4 scales encoded once) ...",
              file=sys.stderr)
        found["pointing_photos"] = len(photos)
        found["pointing"] = loc.pointing_sweep(
            photos, image_dir, img_enc.encode, lambda e: anchors.project(e, "image", k, p),
            lambda t: anchors.project(txt_enc.encode(t), "text", k, p), scale_sets,
            ("a photo of a {}.", "a {}"), bg)
    a = found["any_to_any"]
    for d in ("T2I", "I2T", "T2T", "I2I"):
        print(f"{d}: " + ", ".join(f"{m} {v:.3f}" for m, v in a[d].items()))
    g = found["gap"]
    print(f"modality gap: centroid distance {g['centroid_distance']:.3f}, photo's nearest is a "
          f"caption {100 * g['image_nn_is_text']:.1f}%, caption's nearest is a photo "
          f"{100 * g['text_nn_is_image']:.2f}%")
    for r in found["composition"]:
        print(f"compose w={r['image_weight']:.2f}: photo {r['photo_found']:.3f}, caption target "
              f"{r['caption_target_found']:.3f}, both {r['both_found']:.3f}")
    for r in found.get("pointing", []):
        print(f"pointing scales {r['scales']} {r['template']!r} background {r['background']}: "
              f"hit {r['hit']:.3f} strict {r['hit_strict']:.3f} (centre {r['centre_hit']:.3f} / "
              f"{r['centre_hit_strict']:.3f})")
    if args.json:
        print(json.dumps(found, indent=1))
    if args.docs:
        write_section(Path(args.docs), "unified", unified_markdown(found))
        print(f"wrote the 'unified' section of {args.docs}", file=sys.stderr)
    return 0


def _data_dir(args) -> Path | None:
    """--data, else the shared evaluation data (ASIF_DATA or ../shared/data), else None."""
    from asif_index.datasets import shared_data_dir

    return Path(args.data) if args.data else shared_data_dir()


def cmd_locate(args) -> int:
    from asif_cli.db_commands import _open

    out = Path(args.out) if args.out else Path(args.image).with_suffix(".heat.png")
    idx = _open(args)
    hm = idx.locate(args.image, args.text, scales=args.scales, background=args.background)
    from asif_index.methods.locate import overlay

    out.parent.mkdir(parents=True, exist_ok=True)
    overlay(args.image, hm.values).save(out)
    x, y = hm.peak
    if args.json:
        print(json.dumps({"image": args.image, "text": args.text, "peak": [x, y],
                          "out": str(out), "crops": len(hm.boxes),
                          "best_crop": [int(v) for v in hm.boxes[int(np.argmax(hm.scores))]]}))
    else:
        print(f"{args.text!r} peaks at x={x}, y={y} of {args.image}; map written to {out}")
    return 0


def cmd_evaluate_text_classifier(args) -> int:
    from asif_index.datasets import read_class_folder
    from asif_index.errors import ConfigError
    from asif_index.evaluation import CIFAR_TEMPLATES, write_section
    from asif_index.methods import text_classifier as tc
    from asif_index.search import prompts, zero_shot_classify

    anchors, *_, (img_enc, txt_enc) = _flickr_space(args, args.limit_anchor_images)
    cf = _data_dir(args) / "cifar10-test"  # _flickr_space found the folder
    if not cf.is_dir():
        raise ConfigError(f"no CIFAR-10 at '{cf}' (--data DIR with cifar10-test/)")
    items = read_class_folder(cf)[::args.every]
    labels = sorted({c for _, c in items})
    y = np.array([labels.index(c) for _, c in items])
    print(f"embedding {len(items)} CIFAR-10 photos (cached after the first run) ...",
          file=sys.stderr)
    img = img_enc.encode([p for p, _ in items])
    k, p = args.k or 800, args.p or 8.0
    found = {"command": "asif-index " + " ".join(sys.argv[1:]), "anchors": len(anchors),
             "k": k, "p": p, "images": len(items), "labels": labels,
             "templates": len(tc.TRAIN_TEMPLATES), "per_label": args.per_label,
             "draws": args.draws}
    ptxt = txt_enc.encode(prompts(labels, CIFAR_TEMPLATES))
    pred, _ = zero_shot_classify(anchors, img, ptxt, len(labels), len(CIFAR_TEMPLATES),
                                 "mean", k, p)
    found["zero_shot"] = float((pred == y).mean())
    print(f"prompt zero-shot: {found['zero_shot']:.3f}", flush=True)
    iv = anchors.project(img, "image", k, p)
    captions = [pl.caption for pl in anchors.payloads]
    _, ys = tc.training_sentences(labels, captions, per_label=args.per_label)
    found["sentences"] = np.bincount(ys, minlength=len(labels)).tolist()
    shift = (tc.modality_shift(anchors.engine_matrix("image"), anchors.engine_matrix("text"),
                               (k, p), (k, p)) if args.mean_shift else None)

    def project_text(e):
        return anchors.project(e, "text", k, p)

    grid = []

    def trial(kind: str, mitigation: str, s: float, mined, row_kind: str, **options) -> None:
        t0 = time.perf_counter()
        head = tc.train_text_head(labels, txt_enc.encode, project_text, anchors.ids, mined, s,
                                  mitigation, kind, shift, **options)
        dt = time.perf_counter() - t0
        got, _ = head.predict(iv)
        acc = float(np.mean(np.array([labels.index(g) for g in got]) == y))
        grid.append({"kind": row_kind, "mitigation": mitigation, "noise": s, "accuracy": acc,
                     "train_s": dt})
        print(f"{row_kind:<8} {mitigation:<10} s={s:<5g} accuracy {acc:.3f} "
              f"(trained in {dt:.1f} s)", flush=True)

    trial("centroid", "none", 0.0, (), "centroid (templates only)")  # control: no captions
    for kind in args.kinds:
        for mitigation in ("noise", "mean-shift", "both") if args.mean_shift else ("noise",):
            for s in args.noise:
                if mitigation == "mean-shift" and s > 0:
                    continue  # mean shift alone has no noise axis
                if mitigation == "both" and s == 0:
                    continue  # = mean shift alone
                name = "none" if mitigation == "noise" and s == 0 else mitigation
                trial(kind, name, s, captions, kind, draws=args.draws, per_label=args.per_label)
    found["grid"] = grid
    if args.json:
        print(json.dumps(found, indent=1))
    if args.docs:
        write_section(Path(args.docs), "text-classifier", text_classifier_markdown(found))
        print(f"wrote the 'text-classifier' section of {args.docs}", file=sys.stderr)
    return 0


def cmd_train_text_classifier(args) -> int:
    from asif_cli.db_commands import _open
    from asif_index.errors import ConfigError

    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    if len(labels) < 2:
        raise ConfigError("give at least two comma-separated labels (--labels cat,dog)")
    idx = _open(args)
    t0 = time.perf_counter()
    head, path = idx.train_text_classifier(
        args.head, labels, noise=args.noise, mitigation=args.mitigation, kind=args.kind,
        mine_captions=args.mine_captions, draws=args.draws, per_label=args.per_label)
    per = head.meta["sentences_per_label"]
    print(f"head '{args.head}' ({head.meta['kind']}, {head.meta['mitigation']}, noise "
          f"{head.meta['noise']:g}) trained on {head.meta['sentences']} sentences ("
          + ", ".join(f"{lb} {n}" for lb, n in zip(labels, per))
          + f") in {time.perf_counter() - t0:.1f} s; saved to {path}")
    return 0


def cmd_evaluate_rerank(args) -> int:
    import tempfile

    from asif_index.evaluation import write_section
    from connectors.index import Index

    anchors, di, dt, dti, caps, dv_imgs, (img_enc, txt_enc) = _flickr_space(
        args, args.limit_anchor_images)
    d_caps = [c for cs in caps for c in cs]
    rng = np.random.default_rng(0)
    qs = rng.choice(len(d_caps), min(args.queries, len(d_caps)), replace=False)
    found = {"command": "asif-index " + " ".join(sys.argv[1:]), "queries": len(qs),
             "photos": len(di), "anchors": len(anchors), "candidates": args.candidates,
             "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            from connectors.qdrant_edge import QdrantEdgeStore

            store, engine = QdrantEdgeStore("rerank", path=str(Path(tmp) / "edge")), "Qdrant Edge"
        except ImportError:
            from connectors.memory import MemoryStore

            store, engine = MemoryStore("rerank"), "the in-memory reference store"
        found["engine"] = engine
        from asif_index.recipe import PUBLISHED  # the section's figures: k=800, p=8

        idx = Index.create(store, img_enc, txt_enc, k=800, p=8.0, recipe=PUBLISHED)
        try:
            t0 = time.perf_counter()
            idx.add_anchor_embeddings(anchors.matrix("image"), anchors.matrix("text"),
                                      list(anchors.payloads))
            recs, _ = idx.records(di, "image", [str(x) for x in dv_imgs],
                                  [{"photo": i} for i in range(len(dv_imgs))])
            idx.write(recs)
            print(f"{len(anchors)} anchors and {len(recs)} dev photos into {engine} in "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
            flt = {"modality": "image"}
            settings = [("plain database ranking", None, None)] + [
                (f"local CKA m={m} weight={w:g}", m, w) for m in args.m for w in args.weights]
            for label, m, w in settings:
                t0 = time.perf_counter()
                hit = np.zeros((len(qs), 3))
                for n, q in enumerate(qs):
                    if m is None:
                        hits = idx.search(text=d_caps[q], limit=10, filter=flt)
                    else:
                        hits = idx.search_reranked(text=d_caps[q], limit=10, filter=flt,
                                                   candidates=args.candidates, m=m, weight=w)
                    got = [h.payload["photo"] for h in hits]
                    hit[n] = [dti[q] in got[:k] for k in (1, 5, 10)]
                r = dict(zip(("R@1", "R@5", "R@10"), hit.mean(0).tolist()))
                row = {"setting": label, **r,
                       "ms_per_query": 1000 * (time.perf_counter() - t0) / len(qs)}
                found["rows"].append(row)
                print(f"{label:<32} R@1 {r['R@1']:.3f} R@5 {r['R@5']:.3f} R@10 {r['R@10']:.3f} "
                      f"({row['ms_per_query']:.1f} ms a query)", flush=True)
        finally:
            idx.close()
    if args.json:
        print(json.dumps(found, indent=1))
    if args.docs:
        write_section(Path(args.docs), "rerank", rerank_markdown(found, engine))
        print(f"wrote the 'rerank' section of {args.docs}", file=sys.stderr)
    return 0


def cmd_evaluate_qbnorm(args) -> int:
    from asif_index.errors import ConfigError
    from asif_index.evaluation import load_eval_data, qbnorm_grid, write_section
    from dataclasses import replace

    from asif_index.recipe import DEFAULT, PUBLISHED

    data_dir = _data_dir(args)
    if data_dir is None:
        raise ConfigError("no evaluation data: pass --data DIR (with flickr8k/ and "
                          "cifar10-test/) or set ASIF_DATA")
    img_enc, txt_enc = _settings(args).encoders()
    data = load_eval_data(data_dir, img_enc, txt_enc, args.limit_anchor_images,
                          args.limit_cifar, log=lambda *a: print(*a, file=sys.stderr))
    # the default recipe's projection, its temperature swept here
    recipes = [(PUBLISHED, 800, 8.0), (replace(DEFAULT, qbnorm=None), 800, 8.0)]
    rows = qbnorm_grid(data, txt_enc, recipes, args.temperatures,
                       log=lambda m: print(m, file=sys.stderr))
    found = {"command": "asif-index " + " ".join(sys.argv[1:]), "rows": rows,
             "anchors": len(data.anchors), "cifar": int(len(data.cifar_y)),
             "dev_images": int(len(data.dev_img)), "dev_captions": int(len(data.dev_txt))}
    if args.json:
        print(json.dumps(found, indent=1))
    md = qbnorm_markdown(found)
    print(md)
    if args.docs:
        write_section(Path(args.docs), "qbnorm", md)
        print(f"wrote the 'qbnorm' section of {args.docs}", file=sys.stderr)
    return 0


def _dev_data_options(p: argparse.ArgumentParser, data_help: str, kp: bool = True) -> None:
    """--data and --limit-anchor-images (and --k/--p) of the commands that measure on the
    shared evaluation data."""
    from asif_cli.args import kp_options, positive_int

    p.add_argument("--data", help=data_help)
    p.add_argument("--limit-anchor-images", type=positive_int,
                   help="use only the first N train photos as anchors (x5 captions)")
    if kp:
        kp_options(p)


def _report_options(p: argparse.ArgumentParser, section: str) -> None:
    """--json and --docs PAGE (the command's own section of a report page)."""
    p.add_argument("--json", action="store_true", help="also print everything as JSON")
    p.add_argument("--docs", help=f"write the report into this page's '{section}' section")


def head_kinds(text: str) -> list[str]:
    """--kinds: comma-separated head kinds, checked before any embedding."""
    from asif_index.methods.text_classifier import HEAD_KINDS

    kinds = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in kinds if x not in HEAD_KINDS]
    if not kinds or bad:
        raise argparse.ArgumentTypeError(f"unknown head kinds {bad or kinds}; choose from "
                                         f"{', '.join(HEAD_KINDS)}")
    return kinds


def register(sub, common, db) -> None:
    from asif_cli.args import positive_int, positive_ints, unit_float, unit_floats

    p = sub.add_parser("doctor", help="are the image and text encoders usable together: CKA, "
                       "mutual k-NN, shuffled baseline, retrieval against the number of anchors, "
                       "a verdict (exit 1 when not usable)")
    db(p)
    p.add_argument("--data", help="diagnose Flickr8k train pairs from this data folder "
                   "instead of the index's anchors")
    p.add_argument("--sample", type=positive_int, default=2000,
                   help="pairs the kernel statistics use (default 2000)")
    p.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                   help="also diagnose the pairs with shuffled captions (default on)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--docs", help="write the report into this page's 'doctor' section")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("match", help="pair images with captions with no pairing known, from seed "
                       "pairs (seeded QAP, localized CKA, ASIF), measured on Flickr8k dev")
    common(p)
    p.add_argument("--data", help="data folder with flickr8k/ (default ../shared/data)")
    p.add_argument("--sizes", type=positive_ints, default=[100, 500],
                   help="batch sizes to pair (default 100,500)")
    p.add_argument("--seeds", type=positive_int, default=320, help="seed pairs (default 320)")
    p.add_argument("--methods", default=",".join(("qap", "local-cka", "asif-lap", "asif-nn")),
                   help="comma-separated: qap, local-cka, asif-lap, asif-nn (default all)")
    p.add_argument("--restarts", type=positive_int, default=3, help="QAP starts (default 3)")
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    p.add_argument("--docs", help="write the table into this page's 'match' section")
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("evaluate-unified", help="one space for both modalities on Flickr8k dev: "
                       "T2I/I2T/I2I/T2T recall in one collection, the modality gap, composed "
                       "queries and the pointing game of `lab locate`")
    common(p)
    _dev_data_options(p, "data folder with flickr8k/ (default ../shared/data)")
    p.add_argument("--queries", type=positive_int, default=500,
                   help="composed queries (default 500)")
    p.add_argument("--weights", type=unit_floats, default=[0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5,
                                                             0.75, 1.0],
                   help="image weights of the composition curve (default 0,...,1)")
    p.add_argument("--pointing", action=argparse.BooleanOptionalAction, default=True,
                   help="run the pointing game (default on; minutes on a CPU)")
    p.add_argument("--pointing-photos", type=positive_int, default=1000,
                   help="annotated photos to use (default all)")
    p.add_argument("--boxes", help="pointing-game boxes JSON (default: the one shipped)")
    _report_options(p, "unified")
    p.set_defaults(func=cmd_evaluate_unified)

    p = sub.add_parser("evaluate-text-classifier", help="CIFAR-10 accuracy of heads trained on "
                       "text only (noise scales, mean shift, head kinds) against prompt zero-shot")
    common(p)
    _dev_data_options(p, "data folder with flickr8k/ and cifar10-test/")
    p.add_argument("--every", type=positive_int, default=1,
                   help="use every N-th CIFAR-10 photo (default 1: all 10,000)")
    p.add_argument("--noise", type=unit_floats, default=[0.0, 0.02, 0.04, 0.08, 0.12],
                   help="noise scales s (default 0,0.02,0.04,0.08,0.12)")
    p.add_argument("--kinds", type=head_kinds, default=["centroid", "linear"],
                   help="head kinds (default centroid,linear)")
    p.add_argument("--mean-shift", action=argparse.BooleanOptionalAction, default=True,
                   help="also try the mean shift, alone and with noise (default on)")
    p.add_argument("--draws", type=positive_int, default=4,
                   help="noisy copies per sentence (default 4)")
    p.add_argument("--per-label", type=positive_int, default=200,
                   help="anchor captions mined per label at most (default 200)")
    _report_options(p, "text-classifier")
    p.set_defaults(func=cmd_evaluate_text_classifier)

    from asif_index.methods.text_classifier import HEAD_KINDS, MITIGATIONS

    p = sub.add_parser("train-text-classifier", help="train a label head on text only (label "
                       "templates, optionally anchor captions naming a label) and keep it "
                       "beside the index: use it with `classify --head` and `ingest --tag-with`",
                       epilog="example: asif-index train-text-classifier --head animals "
                       "--labels cat,dog,horse,bird")
    db(p)
    p.add_argument("--head", required=True, help="the head's name (letters, digits, _ or -)")
    p.add_argument("--labels", required=True, help="comma-separated label names")
    p.add_argument("--kind", choices=HEAD_KINDS, default="centroid",
                   help="centroid (default: the best on CIFAR-10) or linear (softmax regression)")
    p.add_argument("--mitigation", choices=MITIGATIONS, default="none",
                   help="modality-gap mitigation while training (default none; see "
                   "docs/evaluation.md for the measured effect of each)")
    p.add_argument("--noise", type=unit_float, default=0.04,
                   help="noise std s for --mitigation noise/both (default 0.04)")
    p.add_argument("--draws", type=positive_int, default=4,
                   help="noisy copies per sentence (default 4)")
    p.add_argument("--per-label", type=positive_int, default=200,
                   help="with --mine-captions: captions per label at most (default 200)")
    p.add_argument("--mine-captions", action=argparse.BooleanOptionalAction, default=False,
                   help="add the anchor captions that name a label (default off: on CIFAR-10 "
                   "they lowered accuracy from 0.344 to 0.267, docs/evaluation.md)")
    p.set_defaults(func=cmd_train_text_classifier)

    p = sub.add_parser("evaluate-qbnorm", help="query-bank normalisation (inverted softmax "
                       "over a bank of anchor queries) against the plain ranking: CIFAR-10 and "
                       "Flickr8k dev, both directions, published and per-modality recipes")
    common(p)
    _dev_data_options(p, "data folder with flickr8k/ and cifar10-test/ (default "
                      "../shared/data)", kp=False)
    p.add_argument("--limit-cifar", type=positive_int, help="CIFAR-10 images (default all)")
    p.add_argument("--temperatures", type=lambda t: [float(x) for x in t.split(",") if x],
                   default=[0.03, 0.04, 0.05, 0.06, 0.08],
                   help="bank temperatures (default 0.03,0.04,0.05,0.06,0.08)")
    _report_options(p, "qbnorm")
    p.set_defaults(func=cmd_evaluate_qbnorm)

    p = sub.add_parser("evaluate-rerank", help="localized-CKA re-ranking of the database's top "
                       "candidates against the plain ranking, Flickr8k dev text->image")
    common(p)
    _dev_data_options(p, "data folder with flickr8k/ (default ../shared/data)", kp=False)
    p.add_argument("--queries", type=positive_int, default=1000,
                   help="dev captions to search with (default 1000)")
    p.add_argument("--candidates", type=positive_int, default=50,
                   help="database results re-ranked (default 50)")
    p.add_argument("--m", type=positive_ints, default=[50, 200],
                   help="anchors in a candidate's neighbourhood (default 50,200)")
    p.add_argument("--weights", type=lambda t: [float(x) for x in t.split(",") if x],
                   default=[0.01, 0.02, 0.05], help="weights of the local CKA (default "
                   "0.01,0.02,0.05)")
    _report_options(p, "rerank")
    p.set_defaults(func=cmd_evaluate_rerank)

    p = sub.add_parser("locate", help="where in a photo is what a text describes: a heat map "
                       "from crops scored in the relative space, written over the photo",
                       epilog="example: asif-index lab locate --image dog.jpg --text 'a dog'")
    db(p)
    p.add_argument("--image", required=True, help="the photo")
    p.add_argument("--text", required=True, help="what to find, e.g. 'a dog'")
    p.add_argument("--out", help="output image (default: PHOTO.heat.png beside the photo)")
    p.add_argument("--scales", type=unit_floats, default=None,
                   help="crop sizes as fractions of the photo (default 0.3,0.2: the best on "
                   "Flickr8k dev, docs/evaluation.md)")
    p.add_argument("--background", action=argparse.BooleanOptionalAction, default=True,
                   help="subtract each crop's mean score against scene prompts (default on)")
    p.add_argument("--json", action="store_true", help="print the peak as JSON")
    p.set_defaults(func=cmd_locate)
