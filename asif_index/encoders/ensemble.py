"""Encoder ensembles in one relative space.

Dimension i of a relative vector is anchor pair i whatever encoder embedded it, so several
encoders of one modality combine with no training by mixing their cosine rows before top-k:

    sim(x, a_i) = sum_e w_e * cos(f_e(x), f_e(a_i)),     sum_e w_e = 1

That mix is one dot product of weighted concatenations: with u(x) = [sqrt(w_1) f_1(x), ...,
sqrt(w_m) f_m(x)] (each f_e unit norm), u(x) . u(a) = sum_e w_e cos_e and |u(x)| = 1. So an
ensemble is an :class:`Encoder` whose output is that concatenation, and everything built on
encoders (anchors, projection, the top-k engine, exact anchor add/remove/rebuild, the embedding
cache, which each member keeps under its own name) holds for it unchanged.

Specs (``--image-encoder``): ``efficientnet-lite0+efficientnet-lite2`` (equal weights) or
``efficientnet-lite0*0.3+efficientnet-lite2*0.7`` (weights, normalised to sum 1).
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import numpy as np

from asif_index.encoders.base import EncodeResult, Encoder
from asif_index.errors import ConfigError, InputError


def parse_members(spec: str) -> list[tuple[str, float]]:
    """``'a*0.3+b*0.7'`` -> [('a', 0.3), ('b', 0.7)], weights normalised to sum 1; a one-line
    ConfigError naming the bad part otherwise."""
    parts = [p.strip() for p in spec.split("+")]
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"encoder ensemble '{spec}' needs two or more encoders joined by '+', "
                          "e.g. efficientnet-lite0+efficientnet-lite2")
    out: list[tuple[str, float]] = []
    for part in parts:
        name, star, weight = part.rpartition("*") if "*" in part else (part, "", "1")
        try:
            w = float(weight)
        except ValueError:
            w = float("nan")
        if not name or not (w > 0 and np.isfinite(w)):
            raise ConfigError(f"encoder ensemble '{spec}': '{part}' must be ENCODER or "
                              "ENCODER*WEIGHT with a positive weight, e.g. efficientnet-lite2*0.6")
        out.append((name, w))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"encoder ensemble '{spec}' names an encoder twice; give each once "
                          "with its weight")
    total = sum(w for _, w in out)
    return [(n, w / total) for n, w in out]


class EnsembleEncoder(Encoder):
    """Several encoders of one modality as one: float32 [n, sum of dims], unit rows, whose dot
    products are the weighted mean of the members' cosines (see the module docstring).

    Each member validates, caches and reports its own inputs; an input one member cannot
    encode is skipped (or raised) for the ensemble, so every row has every member's part.
    """

    def __init__(self, members: Sequence[tuple[Encoder, float]]) -> None:
        if len(members) < 2:
            raise ConfigError("an encoder ensemble needs two or more encoders")
        modalities = {m.modality for m, _ in members}
        if len(modalities) != 1:
            raise ConfigError(f"an encoder ensemble mixes modalities {sorted(modalities)}; "
                              "combine image encoders with image encoders, text with text")
        total = float(sum(w for _, w in members))
        self.members = [(m, float(w) / total) for m, w in members]
        self.modality = members[0][0].modality
        self.dim = int(sum(m.dim for m, _ in self.members))
        first = self.members[0][0]
        self.device = first.device
        self.batch_size = first.batch_size
        self.decode_workers = first.decode_workers
        self.cache = None  # the members cache, each under its own name
        self.timings = {"decode_s": 0.0, "encode_s": 0.0}
        # the identity (encoders.identity): each member's, with its weight, in order
        self.name = "ensemble[" + ",".join(f"{m.name}*{w:.6g}" for m, w in self.members) + "]"

    def _prepare(self, item: Any, label: str) -> Any:  # pragma: no cover - members prepare
        raise NotImplementedError

    def _forward(self, prepared: list[Any]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def content_key(self, item: Any) -> str | None:
        return self.members[0][0].content_key(item)

    def encode_safe(self, items: Sequence[Any], on_error: Literal["raise", "skip"] = "skip",
                    progress: Callable[[int, int], None] | None = None,
                    use_cache: bool = True) -> EncodeResult:
        items = list(items)
        results: list[EncodeResult] = []
        for j, (member, _) in enumerate(self.members):
            def part(done: int, total: int, j=j) -> None:  # one bar across the members
                if progress is not None:
                    progress((j * total + done) // len(self.members), total)
            res = member.encode_safe(items, on_error=on_error, progress=part,
                                     use_cache=use_cache)
            results.append(res)
        kept = sorted(set.intersection(*(set(r.kept) for r in results)))
        errors: list[InputError] = []
        seen: set[str] = set()
        for r in results:
            for e in r.errors:
                if (e.item or str(e)) not in seen:
                    seen.add(e.item or str(e))
                    errors.append(e)
        blocks = []
        for (member, w), r in zip(self.members, results):
            row_of = {pos: n for n, pos in enumerate(r.kept)}
            rows = np.fromiter((row_of[i] for i in kept), np.int64, len(kept))
            blocks.append(np.sqrt(w, dtype=np.float32) * r.embeddings[rows])
        out = (np.concatenate(blocks, axis=1) if kept
               else np.zeros((0, self.dim), np.float32)).astype(np.float32)
        self.timings = {k: sum(m.timings.get(k, 0.0) for m, _ in self.members)
                        for k in ("decode_s", "encode_s")}
        device_out = None
        if self.device.type == "cuda":
            import torch

            device_out = torch.from_numpy(out).to(self.device)
        return EncodeResult(out, kept, errors, device_out)


__all__ = ["EnsembleEncoder", "parse_members"]
