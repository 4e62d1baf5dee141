"""Commands for the methods built on paired embeddings: ``doctor`` (are two encoders usable
together) and ``match`` (pairing images and captions without a known pairing)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from asif_cli.core_commands import _settings


def _flickr_pairs(args):
    """Flickr8k train pairs (one caption per image) and dev pairs, through the encoders'
    cache: (train image [n, d_i], train text [n, d_t], dev image, dev text)."""
    from asif_index.datasets import flickr8k, shared_data_dir
    from asif_index.errors import ConfigError

    data = Path(args.data) if args.data else shared_data_dir()
    if data is None or not (data / "flickr8k").is_dir():
        raise ConfigError(f"no Flickr8k under '{data}': pass --data DIR (with flickr8k/) or "
                          "set ASIF_DATA")
    img_enc, txt_enc = _settings(args).encoders()
    train, dev = flickr8k(data / "flickr8k")

    def first_caption(rows):
        seen: dict = {}
        for r in rows:
            seen.setdefault(r.image, r.caption)
        return list(seen), list(seen.values())

    ti, tc = first_caption(train)
    di, dc = first_caption(dev)
    print(f"embedding {len(ti)} train and {len(di)} dev pairs (cached after the first run) ...",
          file=sys.stderr)
    return img_enc.encode(ti), txt_enc.encode(tc), img_enc.encode(di), txt_enc.encode(dc)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def doctor_markdown(found: dict) -> str:
    lines = ["## Do the two encoders represent the world alike? (`asif-index doctor`)", "",
             f"Command: `{found['command']}`. {found['what']}", "",
             "| pairs | linear CKA | RBF CKA | mutual 10-NN | verdict |", "|---|---|---|---|---|"]
    for label, d in found["runs"].items():
        lines.append(f"| {label} | {d['linear_cka']:.3f} (shuffled {d['shuffled_linear_cka']:.3f}"
                     f", z {d['cka_z']:.0f}) | {d['rbf_cka']:.3f} (shuffled "
                     f"{d['shuffled_rbf_cka']:.3f}) | {d['mutual_knn']:.3f} (shuffled "
                     f"{d['shuffled_mutual_knn']:.3f}) | {'usable' if d['usable'] else 'not usable'} |")
    curve = found["runs"].get("real", {}).get("retrieval") or []
    if curve:
        lines += ["", "Text->image R@10 among 500 held-out pairs against the number of anchors "
                  f"(chance {curve[0]['chance']:.2f}): " + ", ".join(
                      f"{r['anchors']}: {r['t2i_R@10']:.3f}" for r in curve) + "."]
    lines += ["", "Verdict on the real pairs: " + found["runs"].get("real", {}).get("verdict", "")]
    return "\n".join(lines)


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
        md = ["## Pairing images and captions without a pairing (`asif-index match`)", "",
              f"Command: `asif-index {' '.join(sys.argv[1:])}`. Flickr8k dev images with one "
              f"caption each, shuffled; {args.seeds} seed pairs from train. Methods: seeded QAP "
              "(scipy FAQ over the two cosine graphs, seeds as a partial match, "
              f"{args.restarts} starts), localized CKA (similarity profiles over the seeds "
              "correlated, then a linear assignment), ASIF relative vectors over the seeds with "
              "a linear assignment, and ASIF nearest neighbour.", "",
              "| pairs | method | matched | chance | seconds |", "|---|---|---|---|---|"]
        md += [f"| {r['pairs']} | {r['method']} | {r['accuracy']:.3f} | {r['chance']:.3f} | "
               f"{r['seconds']:.2f} |" for r in rows]
        write_section(Path(args.docs), "match", "\n".join(md))
        print(f"wrote the 'match' section of {args.docs}", file=sys.stderr)
    return 0


def register(sub, common, db) -> None:
    from asif_cli.args import positive_int, positive_ints

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
