import os
from pathlib import Path

import numpy as np
import pytest
import torch

from asif_index.datasets import shared_data_dir

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run on the CPU under Triton's interpreter; it reads this
    # variable when a kernel module is imported, so it is set before any test imports one.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def encoders(tmp_path_factory):
    """The light image encoder (EfficientNet-Lite0, 4-6x faster than the default ensemble)
    and the default text encoder, with a session-local cache."""
    from asif_index.encoders import EmbeddingCache, image_encoder_from_spec, text_encoder_from_spec

    cache = EmbeddingCache(tmp_path_factory.mktemp("cache") / "emb.sqlite")
    return (
        image_encoder_from_spec("light", device="cpu", cache=cache),
        text_encoder_from_spec("default", device="cpu", cache=cache),
    )


@pytest.fixture(scope="session")
def sample_embeddings(encoders):
    """Real embeddings of the bundled sample: (image [42, 1280], text [42, 384], labels)."""
    from asif_index.sample_data import sample_pairs

    img_enc, txt_enc = encoders
    arrays, captions, labels = sample_pairs()
    return img_enc.encode(arrays), txt_enc.encode(captions), labels


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("../shared/data (Flickr8k, CIFAR-10) is absent on this machine")
    return d


def unit_rows(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
