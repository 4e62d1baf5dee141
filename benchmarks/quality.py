"""Question 5: quality as a k x p grid (plots) and accuracy versus the number of anchors.

    python -m benchmarks.quality [--grid runs/eval/evaluation.json] [--anchors 1000,3000,10000,30000]

The grid comes from ``asif-index eval sweep`` (run it first; it caches every embedding). The
curve subsamples the 30,000 Flickr8k train pairs (random pairs, fixed seed) and evaluates
CIFAR-10 zero-shot accuracy and Flickr8k dev text-to-image Recall@10 at k=min(800, N), p=8:
the data-efficiency curve of the ASIF paper.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from asif_index.anchors import AnchorSet
from asif_index.config import AsifSettings
from asif_index.datasets import shared_data_dir
from asif_index.evaluation import evaluate_point, load_eval_data
from benchmarks.common import machine, table, write_json


def plot_grid(grid: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({g["k"] for g in grid["grid"]})
    ps = sorted({g["p"] for g in grid["grid"]})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (key, title) in zip(axes, [("cifar10_acc_mean", "CIFAR-10 zero-shot accuracy"),
                                        ("t2i_R@10", "Flickr8k text->image R@10"),
                                        ("i2t_R@10", "Flickr8k image->text R@10")]):
        m = np.array([[next(g[key] for g in grid["grid"] if g["k"] == k and g["p"] == p)
                       for p in ps] for k in ks])
        im = ax.imshow(m, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(ps)), [f"{p:g}" for p in ps])
        ax.set_yticks(range(len(ks)), [str(k) for k in ks])
        ax.set_xlabel("p")
        ax.set_ylabel("k")
        ax.set_title(title)
        for i in range(len(ks)):
            for j in range(len(ps)):
                ax.text(j, i, f"{m[i, j]:.3f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def subset(anchors: AnchorSet, n: int, seed: int = 0) -> AnchorSet:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(anchors), n, replace=False))
    s = AnchorSet(anchors.manifest.__class__(**{**vars(anchors.manifest), "version": 0}))
    s.add(anchors.image[rows], anchors.text[rows], [anchors.payloads[r] for r in rows])
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--grid", default="runs/eval/evaluation.json")
    ap.add_argument("--anchors", default="1000,3000,10000,30000")
    ap.add_argument("--out", default="runs/bench/quality.json")
    ap.add_argument("--plots", default="docs/img")
    a = ap.parse_args(argv)
    plots = Path(a.plots)
    plots.mkdir(parents=True, exist_ok=True)
    res = {"machine": machine()}
    if Path(a.grid).is_file():
        grid = json.loads(Path(a.grid).read_text())
        res["grid_plot"] = str(plot_grid(grid, plots / "quality_grid.png"))
    data_dir = shared_data_dir()
    if data_dir is None:
        print("no ../shared/data: only the grid plot was made")
        write_json(res, a.out)
        return
    s = AsifSettings.load()
    img_enc, txt_enc = s.encoders()
    data = load_eval_data(data_dir, img_enc, txt_enc, log=lambda *_: None)
    full = data.anchors
    rows = []
    for n in [int(x) for x in a.anchors.split(",")]:
        n = min(n, len(full))
        data.anchors = subset(full, n)
        r = evaluate_point(data, txt_enc, min(800, n), 8.0)
        row = {"anchors": n, "k": min(800, n), "cifar10_acc_mean": r["cifar10_acc_mean"],
               "cifar10_acc_max": r["cifar10_acc_max"], "t2i_R@10": r["t2i_R@10"],
               "i2t_R@10": r["i2t_R@10"]}
        print(table([row], list(row)), flush=True)
        rows.append(row)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["anchors"] for r in rows]
    for key, lbl in [("cifar10_acc_mean", "CIFAR-10 zero-shot acc"), ("t2i_R@10", "Flickr8k T2I R@10"),
                     ("i2t_R@10", "Flickr8k I2T R@10")]:
        ax.plot(xs, [r[key] for r in rows], marker="o", label=lbl)
    ax.axhline(0.1, ls=":", c="grey", label="CIFAR-10 chance")
    ax.set_xscale("log")
    ax.set_xlabel("anchor pairs (Flickr8k train)")
    ax.set_title("ASIF quality vs number of anchors (k=min(800,N), p=8)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "quality_anchors.png", dpi=110)
    plt.close(fig)
    res.update(rows=rows, curve_plot=str(plots / "quality_anchors.png"),
               markdown=table(rows, list(rows[0])))
    print("\n" + res["markdown"])
    write_json(res, a.out)


if __name__ == "__main__":
    main()
