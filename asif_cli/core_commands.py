"""Commands on the core alone (no database): ``demo`` and ``evaluate``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from asif_cli.args import kp_options, positive_float, positive_floats, positive_int, positive_ints


def _settings(args):
    from asif_index.config import AsifSettings

    return AsifSettings.load(
        getattr(args, "config", None),
        text_encoder=getattr(args, "text_encoder", None),
        image_encoder=getattr(args, "image_encoder", None),
        device=getattr(args, "device", None),
        k=getattr(args, "k", None),
        p=getattr(args, "p", None),
        cache_dir=getattr(args, "cache_dir", None),
    )


def _demo_data(args, img_enc):
    """-> (image embeddings, image refs, captions per image, labels per image or None).
    One row per distinct image; captions of the same image are grouped."""
    if not args.captions:
        from asif_index.sample_data import sample_pairs

        arrays, captions, labels = sample_pairs()
        out = Path(args.out) / "images"
        out.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        refs = []
        for i, (a, lab) in enumerate(zip(arrays, labels)):
            p = out / f"{i:02d}-{lab}.jpg"
            Image.fromarray(a).resize((256, 256)).save(p, quality=88)
            refs.append(p)
        return img_enc.encode(arrays), refs, [[c] for c in captions], list(labels)
    from asif_index.datasets import read_captions

    rows = read_captions(args.captions, args.images, args.image_column, args.caption_column)
    by_image: dict = {}
    for r in rows:
        if r.error:
            print(f"skipped: {r.error}", file=sys.stderr)
        else:
            by_image.setdefault(r.image, []).append(r.caption)
    paths = list(by_image)
    res = img_enc.encode_safe(paths)
    for e in res.errors:
        print(f"skipped: {e}", file=sys.stderr)
    paths = [paths[i] for i in res.kept]
    labels = [p.parent.name for p in paths]
    if len(set(labels)) < 2:  # a flat folder: no classes to measure accuracy with
        labels = None
    return res.embeddings, paths, [by_image[p] for p in paths], labels


def cmd_demo(args) -> int:
    """Main job, measured honestly: anchors from part of the data, search and zero-shot on
    images the anchors never saw."""
    from asif_index.anchors import AnchorManifest, AnchorPayload, AnchorSet
    from asif_index.search import prompts, rank, zero_shot_classify

    s = _settings(args)
    img_enc, txt_enc = s.encoders()
    t0 = time.perf_counter()
    img_emb, refs, caps, labels = _demo_data(args, img_enc)
    n = len(refs)
    if n < 3:
        from asif_index.errors import InputError

        raise InputError(f"the demo needs at least 3 readable images; got {n}")
    # Hold out every third image (by class where there are classes), so anchors and the
    # searched images never overlap.
    held = np.zeros(n, bool)
    groups = labels if labels is not None else ["all"] * n
    seen: dict = {}
    for i, g in enumerate(groups):
        seen[g] = seen.get(g, 0) + 1
        held[i] = seen[g] % 3 == 0
    if not held.any():
        held[-1] = True
    a_rows = np.flatnonzero(~held)
    pair_rows = [i for i in a_rows for _ in caps[i]]
    pair_caps = [c for i in a_rows for c in caps[i]]
    txt_emb = txt_enc.encode(pair_caps)
    from asif_index.recipe import DEFAULT as recipe  # what a new index uses

    anchors = AnchorSet(AnchorManifest(img_enc.name, txt_enc.name, img_enc.dim, txt_enc.dim,
                                       k=s.k, p=s.p, extra={"recipe": recipe.to_dict()}))
    anchors.add(img_emb[pair_rows], txt_emb,
                [AnchorPayload(c, str(refs[i]), "demo") for i, c in zip(pair_rows, pair_caps)])
    items = np.flatnonzero(held)
    (ki, pi), (kt, pt) = anchors.kp("image"), anchors.kp("text")
    print(f"{len(anchors)} anchor pairs from {len(a_rows)} images, embedded in "
          f"{time.perf_counter() - t0:.1f}s ({img_enc.name} + {txt_enc.name}); recipe "
          f"'{recipe.name}' (images k={min(ki, len(anchors))} p={pi:g}, texts "
          f"k={min(kt, len(anchors))} p={pt:g}); "
          f"{len(items)} other images held out as the searched items")
    if not args.captions:
        print("(the bundled sample has 14 photographs in three views each, so a held-out view "
              "is a crop or mirror of a photograph whose other views are anchors; on your data "
              "the held-out images are distinct, and 'asif-index evaluate' measures Flickr8k)")
    # each side by the recipe, as an index made with it (k is capped at the anchors)
    item_vecs = anchors.project(img_emb[items], "image")
    # text -> image: each held-out image's own captions as queries
    q_text = [c for i in items for c in caps[i]]
    q_item = [j for j, i in enumerate(items) for _ in caps[i]]
    q = anchors.project(txt_enc.encode(q_text), "text")
    _, order = rank(q, item_vecs, len(items))
    r1 = float(np.mean([order[r, 0] == q_item[r] for r in range(len(q_text))]))
    print(f"text -> image over the held-out images: R@1 {r1:.3f} for {len(q_text)} captions "
          f"(chance {1 / len(items):.3f})")
    queries = args.query or ([f"a photo of {lab}" for lab in sorted(set(labels))][:4]
                             if labels else q_text[:3])
    qv = anchors.project(txt_enc.encode(queries), "text")
    scores, top = rank(qv, item_vecs, min(3, len(items)))
    lines = []
    for r, text in enumerate(queries):
        hits = [(refs[items[j]], float(scores[r, m])) for m, j in enumerate(top[r])]
        print(f"'{text}':")
        for path, sc in hits:
            print(f"    {sc:.3f}  {path}")
        lines.append((text, hits))
    if labels is not None:
        classes = sorted(set(labels))
        ptxt = txt_enc.encode(prompts(classes))
        pred, _ = zero_shot_classify(anchors, img_emb[items], ptxt, len(classes), 3, "mean")
        acc = float(np.mean([classes[p] == labels[i] for p, i in zip(pred, items)]))
        print(f"zero-shot classification of the {len(items)} held-out images into "
              f"{len(classes)} classes: accuracy {acc:.3f} (chance {1 / len(classes):.3f})")
    else:
        print("zero-shot accuracy not measured: the images have no classes (put them in one "
              "sub-folder per class to measure it)")
    page = _demo_page(Path(args.out), lines)
    print(f"results with thumbnails: {page}")
    if args.save:
        anchors.save(args.save)
        print(f"anchor set saved to {args.save}")
    return 0


def _demo_page(out: Path, lines) -> Path:
    import html

    out.mkdir(parents=True, exist_ok=True)
    parts = ["<!doctype html><meta charset='utf-8'><title>asif-index demo</title>",
             "<style>body{font-family:sans-serif} img{width:180px;height:180px;object-fit:cover}"
             " figure{display:inline-block;margin:4px}</style><h1>asif-index demo</h1>"]
    for text, hits in lines:
        parts.append(f"<h3>{html.escape(text)}</h3>")
        for path, sc in hits:
            src = Path(path).resolve().as_uri()
            parts.append(f"<figure><img src='{src}'><figcaption>{sc:.3f} "
                         f"{html.escape(Path(path).name)}</figcaption></figure>")
    page = out / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page.resolve()


# what `eval sweep` compares by default: the EfficientNet-Lite family and its ensembles, with
# the tuned recipe (hub weights are measured on the recipe grid: they lost there)
ENCODER_RECIPES = "tuned"
ENCODER_SETS = ("efficientnet-lite0,efficientnet-lite1,efficientnet-lite2,"
                "efficientnet-lite0+efficientnet-lite2,"
                "efficientnet-lite0+efficientnet-lite1+efficientnet-lite2")


def cmd_evaluate(args) -> int:
    from asif_index.datasets import shared_data_dir
    from asif_index.evaluation import markdown_table, run_evaluation, write_report

    data_dir = Path(args.data) if args.data else shared_data_dir()
    if data_dir is None:
        print("no evaluation data: pass --data DIR (with flickr8k/ and cifar10-test/) or set "
              "ASIF_DATA; skipping", file=sys.stderr)
        return 0
    s = _settings(args)
    img_enc, txt_enc = s.encoders()
    bars: list = []

    def stage(name: str):
        from tqdm import tqdm

        for b in bars:
            b.close()
        bars[:] = [tqdm(desc=name, unit="item", dynamic_ncols=True)]

        def cb(done: int, total: int) -> None:
            bars[0].total = total
            bars[0].update(done - bars[0].n)
        return cb

    data = _eval_data(args, data_dir, img_enc, txt_enc, stage, bars)
    from asif_index.recipe import TUNED, Recipe, parse_list

    ks = [int(x) for x in args.ks.split(",")]
    ps = [float(x) for x in args.ps.split(",")]
    recipes = parse_list(args.recipes)
    extra = []
    if args.per_modality:  # image-side and text-side p apart, at k=800, plain and centred
        pis = [float(x) for x in args.image_ps.split(",")]
        pts = [float(x) for x in args.text_ps.split(",")]
        extra = [(Recipe(center=c, p_image=pi, p_text=pt), 800, 8.0)
                 for c in (False, True) for pi in pis for pt in pts if pi != pt]
        # image-side k apart too: CIFAR-10 gains from wide image vectors, retrieval from a
        # text side at p=4 (each image item then stores k_image entries); each with and
        # without query-bank normalisation of the retrieval (the tuned recipe is one point)
        extra += [(Recipe(k_image=ki, p_text=4.0, qbnorm=t), kt, 8.0)
                  for ki in args.image_ks for kt in (400, 800) for t in (None, args.qbnorm)]
    # hub weights beside query-bank normalisation and combined with it (the tuned recipe's
    # k and p), at each strength beta
    extra += [(replace(TUNED, qbnorm=t, hub=b), 800, 8.0)
              for b in args.hub_betas for t in (None, TUNED.qbnorm)]
    if args.grouped:  # one anchor per image (its captions averaged) against the 5 pairs
        extra += [(r, k, p, True) for r in recipes for k in (400, 800, 1600) for p in (4.0, 8.0)]
    result = run_evaluation(data, txt_enc, ks, ps, recipes=recipes, extra_points=extra)
    sets = [x.strip() for x in (args.encoder_sets or "").split(",") if x.strip()]
    timings = dict(data.timings)
    if sets:
        del data  # one encoder set's embeddings in memory at a time
        result["encoder_sets"] = _encoder_sets(args, s, sets, data_dir, stage, bars)
    import platform
    import shlex

    result["produced_by"] = {
        "command": "asif-index " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()}-core "
        f"{platform.machine()}, {'CUDA' if img_enc.device.type == 'cuda' else 'no GPU'}",
        "embedding_s": {k: round(v, 1) for k, v in timings.items()}}
    j, m = write_report(result, Path(args.out))
    print(markdown_table(result))
    print(f"wrote {j} and {m}")
    if args.docs:
        from asif_index.evaluation import keep_sections

        old = Path(args.docs).read_text() if Path(args.docs).is_file() else ""
        Path(args.docs).write_text(keep_sections(m.read_text(), old))  # doctor's, match's
        # the JSON travels with the page, so docs never hold figures of two different runs
        Path(args.docs).with_suffix(".json").write_text(j.read_text())
        print(f"wrote {args.docs} and {Path(args.docs).with_suffix('.json')}")
    return 0


def _eval_data(args, data_dir: Path, img_enc, txt_enc, stage, bars):
    """The evaluation's embeddings for one encoder pair, the stage bars closed after."""
    from asif_index.evaluation import load_eval_data

    try:
        return load_eval_data(data_dir, img_enc, txt_enc, args.limit_anchor_images,
                              args.limit_cifar, args.limit_dev_images, progress=stage)
    finally:
        for b in bars:
            b.close()


def _encoder_sets(args, s, sets: list[str], data_dir: Path, stage, bars) -> list[dict]:
    """Each image encoder spec of ``sets`` (ensembles 'A+B' too) with the text encoder, at
    each of ``--encoder-recipes``, k=800, p=8; the index's default marked."""
    from asif_index.encoders.registry import DEFAULT_IMAGE, canonical_image_spec
    from asif_index.evaluation import evaluate_point
    from asif_index.recipe import DEFAULT as DEFAULT_RECIPE, parse_list

    recipes = parse_list(args.encoder_recipes)
    default_spec = canonical_image_spec(DEFAULT_IMAGE)
    rows = []
    for spec in sets:
        s_set = s.model_copy(update={"image_encoder": spec})
        img_enc, txt_enc = s_set.encoders()
        data = _eval_data(args, data_dir, img_enc, txt_enc, stage, bars)
        for recipe in recipes:
            r = evaluate_point(data, txt_enc, 800, 8.0, recipe)
            r.update(image_spec=canonical_image_spec(spec), text_spec=s.text_encoder,
                     default=(canonical_image_spec(spec) == default_spec
                              and recipe == DEFAULT_RECIPE))
            a, b = r["select"], r["confirm"]
            print(f"{spec} {recipe.name}: select CIFAR-10 {a['cifar10_acc_mean']:.4f} T2I R@10 "
                  f"{a['t2i_R@10']:.3f} I2T R@10 {a['i2t_R@10']:.3f} | confirm CIFAR-10 "
                  f"{b['cifar10_acc_mean']:.4f} T2I R@10 {b['t2i_R@10']:.3f} I2T R@10 "
                  f"{b['i2t_R@10']:.3f}", flush=True)
            rows.append(r)
        del data
    return rows


def register(sub, common) -> None:
    d = sub.add_parser("demo", help="anchors from part of a data set, then search and zero-shot "
                       "on the images they never saw",
                       epilog="examples: asif-index demo  |  asif-index demo --captions "
                       "captions.tsv --images photos/ --query 'a dog on grass'")
    common(d)
    kp_options(d)
    d.add_argument("--captions", help="captions table (csv/tsv/jsonl/parquet); default: "
                   "the bundled scikit-image sample")
    d.add_argument("--images", help="image folder the table's paths are relative to")
    d.add_argument("--image-column", default="image", help="image column (default: image)")
    d.add_argument("--caption-column", default="caption",
                   help="caption column (default: caption)")
    d.add_argument("--query", action="append", help="text query (repeatable)")
    d.add_argument("--save", help="directory to save the anchor set to")
    d.add_argument("--out", default="runs/demo", help="folder for the results page and the "
                   "sample's images (default runs/demo)")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("evaluate", help="CIFAR-10 zero-shot + Flickr8k retrieval, k x p sweep")
    common(e)
    e.add_argument("--data", help="data folder (default ../shared/data or $ASIF_DATA)")
    e.add_argument("--out", default="runs/eval", help="output folder for JSON + Markdown "
                   "(default runs/eval)")
    e.add_argument("--ks", default="100,400,800,1600,3200", help="k values to sweep")
    e.add_argument("--ps", default="1,4,8,12", help="p values to sweep")
    e.add_argument("--docs", help="also write the report there (docs/evaluation.md is "
                   "written this way, never by hand)")
    e.add_argument("--recipes", default="asif,centered",
                   help="recipes swept over the k x p grid: names (asif = the published "
                        "recipe, centered) or settings like center,p_image=4 (default "
                        "asif,centered)")
    e.add_argument("--per-modality", action=argparse.BooleanOptionalAction, default=True,
                   help="also sweep image-side and text-side p apart at k=800, plain and "
                        "centred (default on)")
    e.add_argument("--grouped", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate one anchor per train image with its captions' embeddings "
                        "averaged (6,000 anchors instead of 30,000 pairs; default on)")
    e.add_argument("--image-ps", default="1,2,4,8", help="image-side p values of that sweep")
    e.add_argument("--text-ps", default="4,8,12", help="text-side p values of that sweep")
    e.add_argument("--image-ks", type=positive_ints, default=[1600, 3200, 6400],
                   help="image-side k values of that sweep (image p=8, text k=400 and 800 at "
                        "p=4, each plain and with query-bank normalisation)")
    e.add_argument("--qbnorm", type=positive_float, default=0.05, metavar="T",
                   help="the query-bank temperature of that sweep (default 0.05; "
                        "'eval qbnorm' sweeps T)")
    e.add_argument("--encoder-sets", default=ENCODER_SETS,
                   help="image encoders (or ensembles A+B, A*0.3+B*0.7) compared with the "
                        "text encoder, comma-separated; '' to skip (default: "
                        f"{ENCODER_SETS})")
    e.add_argument("--encoder-recipes", default=ENCODER_RECIPES,
                   help="recipes each encoder set is measured with at k=800, p=8; ';' between "
                        f"recipes with settings (default {ENCODER_RECIPES})")
    e.add_argument("--hub-betas", type=positive_floats, default=[1.0, 3.0, 10.0],
                   help="hub-weight strengths measured on the tuned recipe, with and without "
                        "query-bank normalisation (default 1,3,10)")
    e.add_argument("--limit-anchor-images", type=positive_int, help="use at most this many "
                   "Flickr8k train images as anchors")
    e.add_argument("--limit-cifar", type=positive_int, help="at most this many CIFAR-10 images")
    e.add_argument("--limit-dev-images", type=positive_int,
                   help="at most this many Flickr8k dev images")
    e.set_defaults(func=cmd_evaluate)
