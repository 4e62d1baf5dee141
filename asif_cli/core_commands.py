"""Commands on the core alone (no database): ``demo`` and ``evaluate``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from asif_cli.args import kp_options, positive_int


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


def cmd_demo(args) -> int:
    """Main job: anchors from a captions data set, then text->image search and zero-shot."""
    from asif_index.anchors import AnchorManifest, AnchorPayload, AnchorSet
    from asif_index.search import prompts, rank, zero_shot_classify

    s = _settings(args)
    img_enc, txt_enc = s.encoders()
    t0 = time.perf_counter()
    if args.captions:
        from asif_index.datasets import read_captions

        rows = read_captions(args.captions, args.images, args.image_column, args.caption_column)
        for r in rows:
            if r.error:
                print(f"skipped: {r.error}", file=sys.stderr)
        rows = [r for r in rows if not r.error]
        res = img_enc.encode_safe([r.image for r in rows])
        for e in res.errors:
            print(f"skipped: {e}", file=sys.stderr)
        rows = [rows[i] for i in res.kept]
        images, captions = res.embeddings, [r.caption for r in rows]
        labels = [r.image.parent.name for r in rows]
        refs = [str(r.image) for r in rows]
        img_emb = images
    else:
        from asif_index.sample_data import sample_pairs

        arrays, captions, labels = sample_pairs()
        img_emb = img_enc.encode(arrays)
        refs = [f"sample:{lbl}#{i}" for i, lbl in enumerate(labels)]
    txt_emb = txt_enc.encode(captions)
    anchors = AnchorSet(AnchorManifest(img_enc.name, txt_enc.name, img_enc.dim, txt_enc.dim,
                                       k=s.k, p=s.p))
    anchors.add(img_emb, txt_emb, [AnchorPayload(c, r, "demo") for c, r in zip(captions, refs)])
    k = min(s.k, len(anchors))
    print(f"{len(anchors)} anchor pairs embedded in {time.perf_counter() - t0:.1f}s "
          f"({img_enc.name} + {txt_enc.name}); k={k}, p={s.p}")
    # Held-out style check: every anchor image is an item; queries are its own captions.
    items = anchors.project(img_emb, "image", k, s.p)
    queries = args.query or ["a cat", "a rocket launch", "coins on a table", "the moon"]
    q = anchors.project(txt_enc.encode(queries), "text", k, s.p)
    scores, order = rank(q, items, 3)
    for qi, text in enumerate(queries):
        hits = ", ".join(f"{refs[j]} ({scores[qi, n]:.3f})" for n, j in enumerate(order[qi]))
        print(f"text -> image  '{text}': {hits}")
    classes = sorted(set(labels))
    ptxt = txt_enc.encode(prompts(classes))
    pred, _ = zero_shot_classify(anchors, img_emb, ptxt, len(classes), 3, "mean", k, s.p)
    acc = float(np.mean([classes[p] == lbl for p, lbl in zip(pred, labels)]))
    print(f"zero-shot classification of the {len(labels)} anchor images into {len(classes)} "
          f"classes: accuracy {acc:.3f} (chance {1 / len(classes):.3f})")
    if args.save:
        anchors.save(args.save)
        print(f"anchor set saved to {args.save}")
    return 0


def cmd_evaluate(args) -> int:
    from asif_index.datasets import shared_data_dir
    from asif_index.evaluation import load_eval_data, markdown_table, run_evaluation, write_report

    data_dir = Path(args.data) if args.data else shared_data_dir()
    if data_dir is None:
        print("no evaluation data: pass --data DIR (with flickr8k/ and cifar10-test/) or set "
              "ASIF_DATA; skipping", file=sys.stderr)
        return 0
    s = _settings(args)
    img_enc, txt_enc = s.encoders()
    data = load_eval_data(data_dir, img_enc, txt_enc, args.limit_anchor_images,
                          args.limit_cifar, args.limit_dev_images)
    ks = [int(x) for x in args.ks.split(",")]
    ps = [float(x) for x in args.ps.split(",")]
    result = run_evaluation(data, txt_enc, ks, ps)
    j, m = write_report(result, Path(args.out))
    print(markdown_table(result))
    print(f"wrote {j} and {m}")
    return 0


def register(sub, common) -> None:
    d = sub.add_parser("demo", help="build anchors and run search + zero-shot on a data set")
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
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("evaluate", help="CIFAR-10 zero-shot + Flickr8k retrieval, k x p sweep")
    common(e)
    e.add_argument("--data", help="data folder (default ../shared/data or $ASIF_DATA)")
    e.add_argument("--out", default="runs/eval", help="output folder for JSON + Markdown "
                   "(default runs/eval)")
    e.add_argument("--ks", default="100,400,800,1600,3200", help="k values to sweep")
    e.add_argument("--ps", default="1,4,8,12", help="p values to sweep")
    e.add_argument("--limit-anchor-images", type=positive_int, help="use at most this many "
                   "Flickr8k train images as anchors")
    e.add_argument("--limit-cifar", type=positive_int, help="at most this many CIFAR-10 images")
    e.add_argument("--limit-dev-images", type=positive_int,
                   help="at most this many Flickr8k dev images")
    e.set_defaults(func=cmd_evaluate)
