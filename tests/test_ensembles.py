"""Encoder ensembles in one relative space (asif_index.encoders.ensemble): the mix is the
weighted mean of the members' cosines, members cache and validate their own inputs, and an
index built on an ensemble stays exact under anchor updates like any other encoder's."""

import numpy as np
import pytest

from asif_index.anchors import AnchorPayload
from asif_index.encoders.base import Encoder, sha1
from asif_index.encoders.cache import EmbeddingCache
from asif_index.encoders.ensemble import EnsembleEncoder, parse_members
from asif_index.encoders.registry import (canonical_image_spec, canonical_text_spec,
                                        image_encoder_from_spec, spec_of_name)
from asif_index.errors import ConfigError, InputError
from connectors.index import Index
from connectors.updates import update_anchors
from tests.stores import make_store

D_IN = 12


class LinearEncoder(Encoder):
    """A real Encoder subclass over arrays: x -> x @ W (then unit norm by the base class);
    inputs whose first entry is negative are refused, as a decoder refuses a bad file."""

    modality = "image"

    def __init__(self, dim, seed, refuse_negative=False, **kw):
        super().__init__(decode_workers=0, **kw)
        self.dim, self.name = dim, f"linear-{dim}-{seed}"
        self.w = np.random.default_rng(seed).standard_normal((D_IN, dim)).astype(np.float32)
        self.refuse_negative, self.calls = refuse_negative, 0

    def content_key(self, item):
        return sha1(np.asarray(item, np.float32).tobytes())

    def _prepare(self, item, label):
        x = np.asarray(item, np.float32)
        if self.refuse_negative and x[0] < 0:
            raise InputError(f"input {label} refused by {self.name}", label)
        return x

    def _forward(self, prepared):
        self.calls += len(prepared)
        return np.stack(prepared) @ self.w


def inputs(seed, n):
    return list(np.random.default_rng(seed).standard_normal((n, D_IN)).astype(np.float32))


def test_mix_is_the_weighted_mean_of_member_cosines():
    a, b = LinearEncoder(8, 1), LinearEncoder(5, 2)
    ens = EnsembleEncoder([(a, 1.0), (b, 3.0)])
    x, y = inputs(3, 20), inputs(4, 30)
    ex, ey = ens.encode(x), ens.encode(y)
    assert ex.shape == (20, 13) and ens.dim == 13
    np.testing.assert_allclose(np.linalg.norm(ex, axis=1), 1.0, atol=1e-6)
    want = 0.25 * a.encode(x) @ a.encode(y).T + 0.75 * b.encode(x) @ b.encode(y).T
    np.testing.assert_allclose(ex @ ey.T, want, atol=1e-5)
    # the identity names every member with its weight, so a reweighted ensemble is another
    assert ens.name == "ensemble[linear-8-1*0.25,linear-5-2*0.75]"
    assert EnsembleEncoder([(a, 1.0), (b, 1.0)]).name != ens.name


def test_members_cache_their_own_embeddings(tmp_path):
    cache = EmbeddingCache(tmp_path / "e.sqlite")
    a, b = LinearEncoder(8, 1, cache=cache), LinearEncoder(5, 2, cache=cache)
    ens = EnsembleEncoder([(a, 0.5), (b, 0.5)])
    x = inputs(5, 10)
    first = ens.encode(x)
    assert (a.calls, b.calls) == (10, 10)
    assert cache.count(a.name) == 10 and cache.count(b.name) == 10
    again = EnsembleEncoder([(a, 0.5), (b, 0.5)]).encode(x)
    assert (a.calls, b.calls) == (10, 10), "a second call re-ran a member"
    np.testing.assert_array_equal(first, again)


def test_an_input_one_member_refuses_is_skipped_and_named():
    a, b = LinearEncoder(8, 1), LinearEncoder(5, 2, refuse_negative=True)
    ens = EnsembleEncoder([(a, 0.5), (b, 0.5)])
    x = inputs(6, 12)
    bad = [i for i, v in enumerate(x) if v[0] < 0]
    assert bad, "the seed must give a refused input"
    res = ens.encode_safe(x, on_error="skip")
    assert res.kept == [i for i in range(12) if i not in bad]
    assert len(res.errors) == len(bad) and "refused by linear-5-2" in str(res.errors[0])
    full = EnsembleEncoder([(a, 0.5), (LinearEncoder(5, 2), 0.5)]).encode(x)
    np.testing.assert_allclose(res.embeddings, full[res.kept], atol=1e-6)
    with pytest.raises(InputError, match="refused"):
        ens.encode(x)


@pytest.mark.parametrize("spec, message", [
    ("efficientnet-lite0+", "two or more"),
    ("efficientnet-lite0*0+efficientnet-lite2", "positive weight"),
    ("efficientnet-lite0*x+efficientnet-lite2", "positive weight"),
    ("efficientnet-lite0+efficientnet-lite0", "twice"),
])
def test_bad_ensemble_specs_are_one_line_errors(spec, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_members(spec)
    assert "\n" not in str(e.value)


def test_specs_and_aliases():
    assert parse_members("a*1+b*3") == [("a", 0.25), ("b", 0.75)]
    assert canonical_image_spec("light") == "efficientnet-lite0"
    assert canonical_image_spec("default") == canonical_image_spec(
        "efficientnet-lite0+efficientnet-lite1+efficientnet-lite2")
    assert canonical_image_spec("light+efficientnet-lite2") == \
        canonical_image_spec("efficientnet-lite0*2+efficientnet-lite2*2")
    assert canonical_text_spec("all-MiniLM-L6-v2") == "default"
    with pytest.raises(ConfigError, match="unknown image encoder spec 'nope'"):
        image_encoder_from_spec("efficientnet-lite0+nope")


def test_the_default_image_encoder_is_the_lite_ensemble_and_names_its_spec():
    """'default' builds Lite0+Lite1+Lite2 at equal weights (3 x 1280-d); the spec it carries,
    and the one its manifest name maps back to, build the same encoder again."""
    enc = image_encoder_from_spec("default", device="cpu")
    assert isinstance(enc, EnsembleEncoder) and enc.dim == 3 * 1280
    assert [m.name for m, _ in enc.members] == [
        "efficientnet-lite0-imagenet", "efficientnet-lite1-imagenet-240px",
        "efficientnet-lite2-imagenet-260px"]
    assert enc.spec == canonical_image_spec("default")
    again = image_encoder_from_spec(spec_of_name(enc.name, "image"), device="cpu")
    assert again.name == enc.name and again.spec == enc.spec
    light = image_encoder_from_spec("light", device="cpu")
    assert light.name == "efficientnet-lite0-imagenet" and light.spec == "efficientnet-lite0"
    assert spec_of_name(light.name, "image") == "efficientnet-lite0"
    assert spec_of_name("timm:resnet18:w.pth@0123456789ab", "image") is None


def test_modalities_do_not_mix():
    t = LinearEncoder(4, 9)
    t.modality = "text"
    with pytest.raises(ConfigError, match="mixes modalities"):
        EnsembleEncoder([(LinearEncoder(8, 1), 1.0), (t, 1.0)])


class TextIdentity:
    modality, dim, name = "text", D_IN, "text-identity"

    def encode(self, items):
        x = np.asarray(items, np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def content_key(self, item):
        return None


@pytest.mark.parametrize("kind", ["memory", "qdrant-edge"])
def test_an_ensemble_index_stays_exact_under_anchor_updates(kind, tmp_path):
    """Anchors and items embedded by the ensemble; after adds (merged and re-projected) and
    removals every stored item equals a fresh projection of its ensemble embedding."""
    from tests.test_updates import assert_equals_rebuild

    ens = EnsembleEncoder([(LinearEncoder(8, 1), 0.4), (LinearEncoder(6, 2), 0.6)])
    idx = Index.create(make_store(kind, tmp_path), ens, TextIdentity(), k=20, p=8.0)
    a_in = inputs(10, 110)
    idx.add_anchor_embeddings(ens.encode(a_in[:100]), TextIdentity().encode(inputs(11, 100)),
                              [AnchorPayload(f"a{i}") for i in range(100)])
    items = inputs(12, 150)
    recs, _ = idx.records(ens.encode(items[:150]), "image", [f"i{i}" for i in range(150)],
                          [{} for _ in range(150)])
    idx.write(recs)
    t_items = inputs(13, 150)
    recs, _ = idx.records(TextIdentity().encode(t_items), "text", [f"t{i}" for i in range(150)],
                          [{} for _ in range(150)])
    idx.write(recs)
    assert_equals_rebuild(idx)
    res = update_anchors(idx, add=(ens.encode(a_in[100:]), TextIdentity().encode(inputs(14, 10)),
                                   [AnchorPayload(f"n{i}") for i in range(10)]))
    assert 0 < res.items_touched < 300
    assert_equals_rebuild(idx)
    idx.remove_anchors(idx.anchors.ids[:5].astype(np.int64))
    assert_equals_rebuild(idx)
    # the stored embedding is the ensemble's (both members' parts)
    first = next(iter(idx.store.scroll_items(version=idx.version)))
    img = [r for r in first if r.modality == "image"][0]
    assert img.embedding.shape == (14,)
