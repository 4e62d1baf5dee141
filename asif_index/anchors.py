"""The anchor set: N image-caption pairs as two normalised matrices with stable ids."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from asif_index.errors import AnchorError, EncoderMismatchError, ShapeError
from asif_index.sparse import SparseBatch

if TYPE_CHECKING:  # torch (via the engine) is imported only by what projects: 'stats' stays fast
    from asif_index.engine import TopKEngine
    from asif_index.recipe import Recipe

Modality = Literal["image", "text"]
MANIFEST = "manifest.json"
ARRAYS = "anchors.npz"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class AnchorPayload:
    caption: str
    image_ref: str = ""
    source: str = ""
    key: str = ""  # content hash of the pair: re-ingesting the same pair is a no-op


@dataclass
class AnchorManifest:
    """What a stored anchor set (or collection) was built with."""

    image_encoder: str
    text_encoder: str
    image_dim: int
    text_dim: int
    k: int = 800
    p: float = 8.0
    version: int = 0
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def check_encoders(self, image_encoder: str, text_encoder: str, where: str) -> None:
        """Raise :class:`EncoderMismatchError` unless the encoder identities match (names
        with a digest of their weights, asif_index.encoders.identity). An index made before
        identities carried digests stored the bare name: that name must match."""
        from asif_index.encoders.identity import base_name

        def same(have: str, stored: str) -> bool:
            return have == stored or ("@" not in stored and base_name(have) == stored)

        mism = []
        if not same(image_encoder, self.image_encoder):
            mism.append(f"image encoder '{image_encoder}' != stored '{self.image_encoder}'")
        if not same(text_encoder, self.text_encoder):
            mism.append(f"text encoder '{text_encoder}' != stored '{self.text_encoder}'")
        if mism:
            from asif_index.encoders.registry import stored_encoder_specs

            specs = stored_encoder_specs(self.extra, self.image_encoder, self.text_encoder)
            flags = " ".join(f"--{m}-encoder '{v}'" for m, v in specs.items() if v)
            raise EncoderMismatchError(
                f"{where} was built with other encoders: {'; '.join(mism)}. Use the stored "
                f"encoders ({flags or 'see its manifest'}; or leave the encoder options unset "
                "and the CLI uses them) or rebuild it with the new ones"
            )


class AnchorSet:
    """Image-caption anchor pairs.

    Row ``r`` holds anchor id ``ids[r]`` (uint32, never reused), its image embedding
    ``image[r]`` (float32 [d_i], unit norm), caption embedding ``text[r]`` (float32 [d_t]) and
    payload. Adding or removing anchors bumps ``version`` and touches no other row.
    """

    def __init__(self, manifest: AnchorManifest) -> None:
        self.manifest = manifest
        self.ids = np.zeros(0, np.uint32)
        self.image = np.zeros((0, manifest.image_dim), np.float32)
        self.text = np.zeros((0, manifest.text_dim), np.float32)
        self.payloads: list[AnchorPayload] = []
        self.added_at = np.zeros(0, np.float64)
        self.next_id = 0
        # what is derived from one version's rows and cleared with any change: top-k engines
        # and hub weights
        self._engines: dict[tuple, Any] = {}
        # the index's folded QB-Norm (asif_index.methods.qbnorm_fold.QBNormFold), attached
        # by the connector that loaded the set; None: not folded
        self.fold = None

    def __getstate__(self) -> dict:
        # an engine is one process's (its GPU memory): a copy sent to a worker builds its own
        return {**self.__dict__, "_engines": {}}

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def version(self) -> int:
        return self.manifest.version

    def matrix(self, modality: Modality) -> np.ndarray:
        if modality == "image":
            return self.image
        if modality == "text":
            return self.text
        raise AnchorError(f"modality must be 'image' or 'text'; got '{modality}'")

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of anchor ids; unknown ids are an error naming them."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(self.ids)
        pos = np.searchsorted(self.ids[order], ids)
        pos = np.minimum(pos, max(len(self.ids) - 1, 0))
        found = len(self.ids) > 0
        ok = found & (self.ids[order][pos] == ids) if found else np.zeros(len(ids), bool)
        if not np.all(ok):
            raise AnchorError(f"unknown anchor ids {ids[~ok][:10].tolist()}")
        return order[pos]

    # --------------------------------------------------------------- recipe
    @property
    def recipe(self) -> "Recipe":
        """How inputs become relative vectors (``asif_index.recipe``); the published ASIF
        recipe unless the manifest says otherwise."""
        from asif_index.recipe import Recipe

        doc = self.manifest.extra.get("recipe")
        cached = getattr(self, "_recipe_cache", None)
        if cached is None or cached[0] != doc:  # parsed once per change, not per projection
            cached = (dict(doc) if doc else doc, Recipe.from_dict(doc))
            self._recipe_cache = cached
        return cached[1]

    def set_recipe(self, recipe: "Recipe", refreeze: bool = False) -> None:
        """Use ``recipe`` from now on. Its statistics (anchor means) are frozen from the
        anchors present now, or from the first anchors added; ``refreeze`` recomputes them
        (a rebuild: stored items must then be re-projected)."""
        self.manifest.extra["recipe"] = recipe.to_dict()
        if refreeze or not recipe.center:
            self.manifest.extra.pop("centers", None)
        self._freeze()
        self._engines.clear()

    def with_recipe(self, recipe: "Recipe", k: int | None = None,
                    p: float | None = None) -> "AnchorSet":
        """A view of these anchors (arrays shared, not copied) projecting by ``recipe`` at
        (k, p), its statistics computed from these anchors: for comparing recipes."""
        import copy

        view = copy.copy(self)
        view.manifest = copy.deepcopy(self.manifest)
        view.manifest.k = self.manifest.k if k is None else int(k)
        view.manifest.p = self.manifest.p if p is None else float(p)
        view._engines = {}
        view.set_recipe(recipe, refreeze=True)
        return view

    def _freeze(self) -> None:
        # a centred recipe subtracts the means; hub weights measure each anchor against them
        needs = self.recipe.center or self.recipe.hub is not None
        if needs and "centers" not in self.manifest.extra and len(self):
            self.manifest.extra["centers"] = {
                "image": self.image.mean(0, dtype=np.float64).astype(np.float32).tolist(),
                "text": self.text.mean(0, dtype=np.float64).astype(np.float32).tolist()}

    def center_of(self, modality: Modality) -> np.ndarray | None:
        """The frozen anchor mean a centred recipe subtracts (float32 [d]), else None."""
        c = self.manifest.extra.get("centers") if self.recipe.center else None
        return None if c is None else np.asarray(c[modality], np.float32)

    def hub_weights(self, modality: Modality) -> np.ndarray | None:
        """The recipe's hub weight of each anchor row, ``exp(-beta * cos(a, mu))`` with mu
        the frozen anchor mean of ``modality`` (float32 [N]), or None without hub weights."""
        beta = self.recipe.hub
        c = self.manifest.extra.get("centers") if beta is not None else None
        if c is None:
            return None
        key = ("hub", modality)
        if key not in self._engines:  # cleared with the engines when the anchors change
            mu = np.asarray(c[modality], np.float64)
            cos = self.matrix(modality).astype(np.float64) @ (mu / max(np.linalg.norm(mu), 1e-12))
            self._engines[key] = np.exp(-float(beta) * cos).astype(np.float32)
        return self._engines[key]

    def hub_weights_of(self, ids: np.ndarray, modality: Modality) -> np.ndarray | None:
        """:meth:`hub_weights` of anchor ``ids`` (any shape), or None without hub weights."""
        w = self.hub_weights(modality)
        if w is None:
            return None
        ids = np.asarray(ids)
        return w[self.rows_of(ids.ravel())].reshape(ids.shape)

    def engine_matrix(self, modality: Modality) -> np.ndarray:
        """The rows the top-k engine searches: the unit anchors, or under a centred recipe
        the anchors minus the frozen mean, renormalised (float32 [N, d])."""
        m = self.matrix(modality)
        c = self.center_of(modality)
        if c is None:
            return m
        m = m - c
        n = np.linalg.norm(m, axis=1, keepdims=True)
        return m / np.maximum(n, 1e-12)

    # ------------------------------------------------------------- mutations
    def add(
        self,
        image_embeddings: np.ndarray,
        text_embeddings: np.ndarray,
        payloads: list[AnchorPayload] | None = None,
        ids: np.ndarray | None = None,
    ) -> np.ndarray:
        """Append pairs; returns their new uint32 ids.

        image_embeddings: float [n, d_i]; text_embeddings: float [n, d_t] (row i of each is
        pair i). ``ids`` may be given when restoring from a database; fresh ids otherwise.
        """
        from asif_index.rows import l2_normalize, validate_rows

        img = l2_normalize(
            validate_rows(image_embeddings, "anchor image embeddings", self.manifest.image_dim),
            "anchor image embeddings",
        )
        txt = l2_normalize(
            validate_rows(text_embeddings, "anchor text embeddings", self.manifest.text_dim),
            "anchor text embeddings",
        )
        if img.shape[0] != txt.shape[0]:
            raise ShapeError(
                f"{img.shape[0]} image embeddings but {txt.shape[0]} text embeddings: "
                "anchors are pairs, one caption per image"
            )
        n = img.shape[0]
        payloads = payloads or [AnchorPayload(caption="") for _ in range(n)]
        if len(payloads) != n:
            raise ShapeError(f"{len(payloads)} payloads for {n} anchor pairs")
        if ids is None:
            new_ids = np.arange(self.next_id, self.next_id + n, dtype=np.uint32)
        else:
            new_ids = np.asarray(ids, dtype=np.uint32)
            if len(np.unique(new_ids)) != n or np.isin(new_ids, self.ids).any():
                raise AnchorError("anchor ids must be new and unique")
        self.ids = np.concatenate([self.ids, new_ids])
        self.image = np.concatenate([self.image, img])
        self.text = np.concatenate([self.text, txt])
        self.payloads.extend(payloads)
        self.added_at = np.concatenate([self.added_at, np.full(n, time.time())])
        if n:
            self.next_id = max(self.next_id, int(new_ids.max()) + 1)
        self._freeze()  # a centred recipe's means, from its first anchors (then frozen)
        self._changed()
        return new_ids

    def remove(self, ids: np.ndarray) -> None:
        """Remove anchors by id (ids are never reused)."""
        rows = self.rows_of(ids)
        keep = np.ones(len(self.ids), bool)
        keep[rows] = False
        self.ids, self.image, self.text = self.ids[keep], self.image[keep], self.text[keep]
        self.added_at = self.added_at[keep]
        self.payloads = [p for p, kp in zip(self.payloads, keep) if kp]
        self._changed()

    def _changed(self) -> None:
        self.manifest.version += 1
        self._engines.clear()

    # ------------------------------------------------------------ projection
    def engine(self, modality: Modality, **options) -> TopKEngine:
        """A cached :class:`TopKEngine` over one modality's anchors (rebuilt after changes)."""
        if len(self) == 0:
            raise AnchorError("the anchor set is empty; add anchor pairs first")
        key = (modality, tuple(sorted(options.items())))
        if key not in self._engines:
            from asif_index.engine import TopKEngine

            self._engines[key] = TopKEngine(self.engine_matrix(modality), **options)
        return self._engines[key]

    def kp(self, modality: Modality, k: int | None = None, p: float | None = None
           ) -> tuple[int, float]:
        """The (k, p) a ``modality`` input is projected with: the given ones, else the
        recipe's for that side, else the manifest's; checked."""
        from asif_index.projection import check_kp

        rk, rp = self.recipe.kp(modality, self.manifest.k, self.manifest.p)
        k = rk if k is None else k
        p = rp if p is None else p
        check_kp(k, p)
        return k, p

    def project(
        self,
        embeddings: np.ndarray,
        modality: Modality,
        k: int | None = None,
        p: float | None = None,
        engine=None,
        **engine_options,
    ) -> SparseBatch:
        """Relative vectors of ``embeddings`` [B, d] of ``modality`` against these anchors,
        by the set's recipe; ``k``/``p`` override the recipe's for this call. engine: search
        with this one instead of the set's own (anything with ``n`` and ``search``, e.g. the
        anchors sharded across processes by connectors.distributed)."""
        from asif_index.projection import project

        k, p = self.kp(modality, k, p)
        c = self.center_of(modality)
        if c is not None:
            embeddings = _minus(embeddings, c)
        return project(embeddings,
                       engine if engine is not None else self.engine(modality, **engine_options),
                       self.ids.astype(np.int64), k=k, p=p,
                       anchor_weights=self.hub_weights(modality))

    # ------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``anchors.npz`` and ``manifest.json`` (payloads included) to ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (ARRAYS + ".tmp.npz")
        np.savez(tmp, ids=self.ids, image=self.image, text=self.text, added_at=self.added_at)
        tmp.replace(d / ARRAYS)
        doc = {
            "manifest": asdict(self.manifest),
            "next_id": self.next_id,
            "payloads": [asdict(p) for p in self.payloads],
        }
        tmpj = d / (MANIFEST + ".tmp")
        tmpj.write_text(json.dumps(doc, indent=1))
        tmpj.replace(d / MANIFEST)
        return d

    @classmethod
    def load(
        cls,
        directory: str | Path,
        image_encoder: str | None = None,
        text_encoder: str | None = None,
    ) -> "AnchorSet":
        """Load a saved set; if encoder names are given they must match the manifest."""
        d = Path(directory)
        if not (d / MANIFEST).is_file() or not (d / ARRAYS).is_file():
            raise AnchorError(f"no anchor set at '{d}' (expected {MANIFEST} and {ARRAYS})")
        doc = json.loads((d / MANIFEST).read_text())
        man = AnchorManifest(**doc["manifest"])
        if image_encoder is not None or text_encoder is not None:
            man.check_encoders(
                image_encoder or man.image_encoder, text_encoder or man.text_encoder, f"'{d}'"
            )
        arr = np.load(d / ARRAYS)
        s = cls(man)
        s.ids, s.image, s.text = arr["ids"], arr["image"], arr["text"]
        s.added_at = arr["added_at"]
        s.payloads = [AnchorPayload(**p) for p in doc["payloads"]]
        s.next_id = int(doc["next_id"])
        if not (len(s.ids) == len(s.image) == len(s.text) == len(s.payloads)):
            raise AnchorError(f"anchor set at '{d}' is inconsistent: array lengths differ")
        return s


def _minus(x, c: np.ndarray):
    """x - c for an array, or for a torch tensor on the tensor's device (a tensor exists only
    once torch is imported, so nothing here imports it)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.float() - torch.from_numpy(c).to(x.device)
    return np.asarray(x, np.float32) - c
