"""The docs/ sections the evaluation commands write (``--docs PAGE``): each turns a command's
measured figures into its Markdown section, so the pages are generated, never edited by hand.
Pure formatting: no data is read and nothing is measured here."""

from __future__ import annotations

import numpy as np


def doctor_markdown(found: dict) -> str:
    lines = ["## Do the two encoders represent the world alike? (`asif-index lab doctor`)", "",
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


def unified_markdown(found: dict) -> str:
    a, g = found["any_to_any"], found["gap"]
    lines = ["## One space for both modalities (`asif-index eval unified`)", "",
             f"Command: `{found['command']}`. Flickr8k dev: {found['photos']} photos and "
             f"{found['captions']} captions in one collection of relative vectors over the "
             f"{found['anchors']} train pairs (k={found['k']}, p={found['p']:g}); each direction "
             "ranks one modality, the query itself left out.", "",
             "| direction | relevant | R@1 | R@5 | R@10 |", "|---|---|---|---|---|"]
    what = {"T2I": "the caption's photo", "I2T": "any of the photo's 5 captions",
            "T2T": "the other captions of the same photo",
            "I2I": f"photos whose captions agree on 2+ content words ({a['I2I_queries']} "
                   "photos have one)"}
    for d in ("T2I", "I2T", "T2T", "I2I"):
        r = a[d]
        lines.append(f"| {d} | {what[d]} | {r['R@1']:.3f} | {r['R@5']:.3f} | {r['R@10']:.3f} |")
    ch = a["I2I_chance"]
    lines += [f"| I2I chance | {100 * a['I2I_chance_relevant']:.1f}% of photos relevant | "
              f"{ch['R@1']:.3f} | {ch['R@5']:.3f} | {ch['R@10']:.3f} |", "",
              f"Gap between the cross-modal directions (T2I - I2T): R@1 {a['gap_R@1']:+.3f}, "
              f"R@5 {a['gap_R@5']:+.3f}, R@10 {a['gap_R@10']:+.3f}.", "",
              f"**Modality gap** in the relative space: the image and text centroids are "
              f"{g['centroid_distance']:.3f} apart (cosine {g['centroid_cosine']:.3f}); a photo's "
              f"nearest stored vector is a caption for {100 * g['image_nn_is_text']:.1f}% of "
              f"photos (chance {100 * g['chance_image_nn_is_text']:.1f}%), a caption's is a "
              f"photo for {100 * g['text_nn_is_image']:.2f}% (chance "
              f"{100 * g['chance_text_nn_is_image']:.1f}%). Unfiltered search therefore "
              "returns the query's own modality first: filter on `modality` for cross-modal "
              "search.", "",
              f"**Composed queries**: photo A (weight w) + a caption of another photo B "
              f"(1 - w), {found['composition_queries']} queries over the photos; share with A, "
              "B, and both in the top 10:", "",
              "| image weight w | A found | B found | both |", "|---|---|---|---|"]
    for r in found["composition"]:
        lines.append(f"| {r['image_weight']:.2f} | {r['photo_found']:.3f} | "
                     f"{r['caption_target_found']:.3f} | {r['both_found']:.3f} |")
    pg = found.get("pointing")
    if pg:
        from asif_index.methods.locate import DEFAULT_SCALES

        best = [r for r in pg if r["background"] and r["template"] == "a photo of a {}."
                and tuple(r["scales"]) == tuple(DEFAULT_SCALES)]
        best = best[0] if best else None
        lines += ["", f"**Zero-shot localisation** (`asif-index lab locate`), the pointing game on "
                  f"{pg[0]['objects']} objects in {found['pointing_photos']} dev photos annotated "
                  "by hand (`asif_index/data/pointing_flickr8k_dev.json`, method inside): is "
                  "the map's maximum within 15 pixels of (hit) or inside (strict) a box of the "
                  "named object. The centre of the image is the baseline every map must beat "
                  f"(hit {pg[0]['centre_hit']:.3f}, strict {pg[0]['centre_hit_strict']:.3f}: "
                  "these photos are centred). Encoding all the crops took "
                  f"{pg[0]['encode_s_per_photo_all_scales']:.1f} s a photo on this machine.", "",
                  "| crop scales | crops | query | background subtracted | hit | strict |",
                  "|---|---|---|---|---|---|"]
        for r in pg:
            mark = " **(default)**" if r is best else ""
            lines.append(f"| {', '.join(f'{x:g}' for x in r['scales'])} | {r['crops']} | "
                         f"`{r['template']}` | {'yes' if r['background'] else 'no'} | "
                         f"{r['hit']:.3f}{mark} | {r['hit_strict']:.3f} |")
        lines += ["", f"{len(pg)} configurations, all shown. `lab locate`'s default (marked) was "
                  "chosen on this table: the best hit + strict, fewest crops on ties. With "
                  f"{pg[0]['objects']} objects one hit is {100 / pg[0]['objects']:.1f} points, "
                  "so differences under about 5 points are noise."
                  + (f" The default against the centre baseline: hit "
                     f"{100 * (best['hit'] - best['centre_hit']):+.1f} points, strict "
                     f"{100 * (best['hit_strict'] - best['centre_hit_strict']):+.1f} points."
                     if best else "")]
    return "\n".join(lines)


def text_classifier_markdown(found: dict) -> str:
    lines = ["## Trained on text, applied to photos (`asif-index eval text-classifier`)", "",
             f"Command: `{found['command']}`. CIFAR-10 test ({found['images']} photos), anchors "
             f"the {found['anchors']} Flickr8k train pairs (k={found['k']}, p={found['p']:g}). "
             "Every head is trained only on text: "
             f"{found['templates']} templates per label plus up to {found['per_label']} anchor "
             "captions that name exactly one label (sentences per label: "
             + ", ".join(f"{lb} {n}" for lb, n in zip(found["labels"], found["sentences"]))
             + "). Noise: N(0, s^2) per coordinate on the unit text embedding, renormalised, "
             f"{found['draws']} draws per sentence. Mean shift: the mean image minus the mean "
             "text relative vector of 2,000 anchor pairs (each projected leave-one-out), kept "
             "in the head and taken off each photo's vector before the head reads it (the "
             "image-side form of CLOSE's text-side shift; it keeps the training vectors "
             "sparse). Heads: class centroids, or class-balanced softmax "
             "regression (L-BFGS, L2).", "",
             f"Prompt zero-shot with the same anchors and labels: **{found['zero_shot']:.3f}**.",
             "", "| head | mitigation | noise s | accuracy | train s |", "|---|---|---|---|---|"]
    best = max(found["grid"], key=lambda r: r["accuracy"])
    for r in found["grid"]:
        mark = " **(best)**" if r is best else ""
        lines.append(f"| {r['kind']} | {r['mitigation']} | {r['noise']:g} | "
                     f"{r['accuracy']:.3f}{mark} | {r['train_s']:.1f} |")
    lines += ["", f"{len(found['grid'])} configurations, all shown. "
              f"Best text-only head: {best['kind']}, {best['mitigation']}, s={best['noise']:g}: "
              f"{best['accuracy']:.3f} against {found['zero_shot']:.3f} for prompt zero-shot."]
    return "\n".join(lines)


def qbnorm_markdown(found: dict) -> str:
    rows = found["rows"]
    ref = rows[0]  # the published recipe, plain ranking
    best = max(rows, key=lambda r: r["score"])
    md = ["## Query-bank normalisation (`asif-index eval qbnorm`)", "",
          f"Command: `{found['command']}`. {found['anchors']} Flickr8k train pairs as anchors; "
          f"CIFAR-10 zero-shot on {found['cifar']} test images (5 templates averaged); "
          f"Flickr8k dev recall over {found['dev_images']} photos and {found['dev_captions']} "
          "captions, both directions. Each recipe's plain ranking (T = -) beside the same "
          "ranking re-scored by the inverted softmax over a bank of every 5th anchor of the "
          "query's modality (`asif_index.methods.qbnorm`: Smith et al. 2017, Bogolin et al. "
          "2022). The correction re-ranks items for a query, so CIFAR-10 (classes ranked for "
          "an image) does not move. In the database it re-ranks the top 100 candidates: on "
          "this data that gives the same lists as re-scoring all items. T2T and I2I: the "
          "same correction on same-modality search (the other captions of the caption's "
          "photo; photos whose captions share two content words, as in `evaluate-unified`), "
          "which the index leaves plain by default.", "",
          "| recipe | T | bank | CIFAR-10 | T2I R@1 | T2I R@5 | T2I R@10 | I2T R@1 | I2T R@5 "
          "| I2T R@10 | score | d CIFAR-10 | d T2I R@10 | T2T R@10 | I2I R@10 |",
          "|" + "---|" * 15]
    for r in rows:
        t = "-" if r["temperature"] is None else f"{r['temperature']:g}"
        i2i = f"{r['i2i_R@10']:.3f}" if "i2i_R@10" in r else "-"
        md.append(
            f"| {r['recipe']} k={r['k']} p={r['p']:g} | {t} | {r['bank']} | {r['cifar10']:.3f} "
            f"| {r['t2i_R@1']:.3f} | {r['t2i_R@5']:.3f} | {r['t2i_R@10']:.3f} "
            f"| {r['i2t_R@1']:.3f} | {r['i2t_R@5']:.3f} | {r['i2t_R@10']:.3f} "
            f"| {r['score']:.3f} | {100 * (r['cifar10'] - ref['cifar10']):+.1f} "
            f"| {100 * (r['t2i_R@10'] - ref['t2i_R@10']):+.1f} | {r['t2t_R@10']:.3f} | {i2i} |")
    md += ["", f"{len(rows)} configurations. Best by score (CIFAR-10 + mean R@10 of both "
           f"directions): {best['recipe']} k={best['k']}, T = {best['temperature']}: CIFAR-10 "
           f"{100 * (best['cifar10'] - ref['cifar10']):+.1f} points and text-to-image R@10 "
           f"{100 * (best['t2i_R@10'] - ref['t2i_R@10']):+.1f} points against the published "
           "recipe, chosen on this same dev data."]
    plain = next((r for r in rows if r["recipe"] == best["recipe"] and r["k"] == best["k"]
                  and r["temperature"] is None), None)
    if plain is not None and best["temperature"] is not None:
        same = f"T2T R@10 {100 * (best['t2t_R@10'] - plain['t2t_R@10']):+.1f}"
        if "i2i_R@10" in best:
            same += f", I2I R@10 {100 * (best['i2i_R@10'] - plain['i2i_R@10']):+.1f}"
        md[-1] += (f" Against the same recipe's plain ranking it moves T2I R@10 by "
                   f"{100 * (best['t2i_R@10'] - plain['t2i_R@10']):+.1f} and I2T R@10 by "
                   f"{100 * (best['i2t_R@10'] - plain['i2t_R@10']):+.1f} points; on "
                   f"same-modality search by {same} points, which is why a search applies "
                   "it by default only when its candidates are all of the other modality.")
    return "\n".join(md)


def match_markdown(rows: list[dict], command: str, seeds: int, restarts: int) -> str:
    md = ["## Pairing images and captions without a pairing (`asif-index lab match`)", "",
          f"Command: `{command}`. Flickr8k dev images with one "
          f"caption each, shuffled; {seeds} seed pairs from train. Methods: seeded QAP "
          "(scipy FAQ over the two cosine graphs, seeds as a partial match, "
          f"{restarts} starts), localized CKA (similarity profiles over the seeds "
          "correlated, then a linear assignment), ASIF relative vectors over the seeds with "
          "a linear assignment, and ASIF nearest neighbour.", "",
          "| pairs | method | matched | chance | seconds |", "|---|---|---|---|---|"]
    md += [f"| {r['pairs']} | {r['method']} | {r['accuracy']:.3f} | {r['chance']:.3f} | "
           f"{r['seconds']:.2f} |" for r in rows]
    return "\n".join(md)


def rerank_markdown(found: dict, engine: str) -> str:
    base = found["rows"][0]
    md = ["## Localized CKA as a re-ranker over the database (`asif-index eval rerank`)",
          "", f"Command: `{found['command']}`. {found['queries']} Flickr8k dev captions "
          f"(seeded sample) search the {found['photos']} dev photos stored in {engine} "
          f"({found['anchors']} anchors, k=800, p=8); the database's top "
          f"{found['candidates']} are re-ranked by score + weight x the correlation of the "
          "caption's and the photo's similarities over the photo's m strongest anchors "
          "(read from its stored vector, so nothing beyond the database is needed). "
          "One query is one point of R@k; the standard error of R@10 is about "
          f"{100 * np.sqrt(base['R@10'] * (1 - base['R@10']) / found['queries']):.1f} "
          "points.", "", "| ranking | R@1 | R@5 | R@10 | ms a query |", "|---|---|---|---|---|"]
    md += [f"| {r['setting']} | {r['R@1']:.3f} | {r['R@5']:.3f} | {r['R@10']:.3f} | "
           f"{r['ms_per_query']:.1f} |" for r in found["rows"]]
    best = max(found["rows"][1:], key=lambda r: r["R@1"] + r["R@5"] + r["R@10"],
               default=None)
    if best:
        md += ["", f"Best re-ranking ({best['setting']}): R@10 "
               f"{100 * (best['R@10'] - base['R@10']):+.1f} points, R@1 "
               f"{100 * (best['R@1'] - base['R@1']):+.1f} against the plain ranking, chosen "
               "on this same table, so read it as an upper bound. It is not on by default."]
    return "\n".join(md)


__all__ = ["doctor_markdown", "match_markdown", "qbnorm_markdown", "rerank_markdown",
           "text_classifier_markdown", "unified_markdown"]
