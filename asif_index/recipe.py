"""How embeddings become relative vectors: the published ASIF recipe and its training-free
variants (issue 13). A recipe is part of an index's manifest, so items and queries are always
projected the same way, and every statistic it needs is frozen there.

- ``center``: subtract the modality's anchor mean before the cosine (anchors and inputs alike)
  and renormalise. Encoders put every embedding in a narrow cone; the shared component carries
  no information about which anchor is closest but dominates cosines (the "all-but-the-top"
  post-processing of Mu & Viswanath 2018, the mean-centring of relative representations in
  Moschella et al. 2023). The means are computed from the anchors present when they are first
  needed and then frozen: later anchor additions and removals use the same means, so
  incremental updates stay exact; ``anchors rebuild`` recomputes them.
- ``k_image``/``p_image``, ``k_text``/``p_text``: per-modality top-k and power (unset: the
  index's k and p). Image-to-text recall falls as p grows while text-to-image does not, so
  the two sides need not share them.

``Recipe()`` is the published recipe (unit anchors, top-k, clip, power, L2) and stays the
reference in tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from asif_index.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    center: bool = False
    k_image: int | None = None
    p_image: float | None = None
    k_text: int | None = None
    p_text: float | None = None

    def kp(self, modality: str, k: int, p: float) -> tuple[int, float]:
        """(k, p) for one modality, the index's own where the recipe sets none."""
        mk, mp = ((self.k_image, self.p_image) if modality == "image"
                  else (self.k_text, self.p_text))
        return (k if mk is None else int(mk)), (p if mp is None else float(mp))

    @property
    def published(self) -> bool:
        return self == Recipe()

    @property
    def name(self) -> str:
        if self.published:
            return "asif"
        parts = ["centered"] if self.center else []
        for m in ("image", "text"):
            k, p = getattr(self, f"k_{m}"), getattr(self, f"p_{m}")
            if k is not None or p is not None:
                parts.append(f"{m}(k={k if k is not None else '-'},p={p if p is not None else '-'})")
        return "+".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, False)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any] | None) -> "Recipe":
        doc = dict(doc or {})
        known = {f.name for f in fields(cls)}
        unknown = set(doc) - known
        if unknown:
            raise ConfigError(f"unknown recipe settings {sorted(unknown)}: this index was made by "
                              "a newer asif-index; upgrade it to open the index")
        r = cls(**doc)
        for m in ("image", "text"):
            k, p = getattr(r, f"k_{m}"), getattr(r, f"p_{m}")
            if k is not None and (not isinstance(k, int) or k < 1):
                raise ConfigError(f"k_{m} must be a positive integer; got {k!r}")
            if p is not None and not (float(p) > 0):
                raise ConfigError(f"p_{m} must be a positive number; got {p!r}")
        return r

    @classmethod
    def parse(cls, text: str) -> "Recipe":
        """A recipe by name ('asif', 'centered', or one of :data:`RECIPES`) or as
        'center,k_image=400,p_image=4' (for the command line)."""
        if text in RECIPES:
            return RECIPES[text]
        doc: dict[str, Any] = {}
        for part in (x.strip() for x in text.split(",") if x.strip()):
            key, eq, val = part.partition("=")
            if not eq:
                if key != "center":
                    raise ConfigError(f"'{part}' is not a recipe setting: use a name "
                                      f"({', '.join(RECIPES)}) or center,k_image=N,p_image=X,...")
                doc["center"] = True
                continue
            try:
                doc[key] = int(val) if key.startswith("k_") else float(val)
            except ValueError:
                raise ConfigError(f"recipe setting '{part}' needs a number") from None
        return cls.from_dict(doc)


RECIPES: dict[str, Recipe] = {
    "asif": Recipe(),
    "centered": Recipe(center=True),
}
