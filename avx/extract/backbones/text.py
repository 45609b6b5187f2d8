"""Transcript encoders through transformers (BERT-style): token-level or pooled features.

``text`` stores the last hidden state of every token, ``[tokens, D]`` ([CLS] first,
[SEP] last, truncated to ``max_length``), which is what trimodal methods such as LDDU
consume as their text sequence; ``text.pooled`` stores one ``[1, D]`` vector per clip:
the model's pooler output when it has one (BERT's tanh-projected [CLS]), else the
attention-masked mean of the token states. ``layer=-1`` (default) picks the last
hidden state; any other index picks that hidden state.

Text has no clock: token timestamps are NaN unless a corpus provides word timings
(none of the supported ones does yet). Clips without a transcript fail with a clear
reason; a corpus with no ``transcript`` column at all is refused before the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from avx.errors import AvxError, MediaError
from avx.extract.backbones import BACKBONES, BackboneCard
from avx.extract.backbones.base import Runtime, TextBackbone
from avx.extract.weights import resolve_weights, sha256_file, sha256_folder, unavailable


@dataclass(frozen=True)
class TransformerTextConfig:
    """Token states or one pooled vector, which hidden state, and the truncation length."""

    output: Literal["tokens", "pooled"] = "tokens"
    layer: int = -1
    max_length: int = 512


class TransformerText(TextBackbone):
    config_class = TransformerTextConfig
    expects = "HF hub id or save_pretrained folder of a BERT-style encoder (with its tokenizer)"

    def __init__(
        self,
        config: TransformerTextConfig,
        weights: str | None = None,
        runtime: Runtime | None = None,
        *,
        name: str = "text",
    ) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.name, self.config = name, config
        self.runtime = runtime = runtime or Runtime.create()
        self.mode, self.max_length, self.layer = config.output, config.max_length, config.layer
        src = resolve_weights(weights, default=None, backbone=self.name, expects=self.expects)
        if src.kind not in ("folder", "hub"):
            raise AvxError(
                f"{self.name}: weights '{src.spec}' must be a HF hub id or a save_pretrained folder"
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(src.spec)
            model = AutoModel.from_pretrained(src.spec)
        except Exception as e:
            raise unavailable(src.spec, self.name, "tokenizer and model", e) from None
        folder = src.local_folder()
        self.weights = src.provenance(sha256_folder(folder) if folder is not None else None)
        self.model = model.eval().to(runtime.device)
        self.model_type = model.config.model_type
        self.frame_shape = (model.config.hidden_size,)
        self.frame_rate = None
        vocab = folder / "vocab.txt" if folder is not None else None
        self.vocab_sha = sha256_file(vocab) if vocab is not None and vocab.exists() else None
        self.lowercase = bool(getattr(self.tokenizer, "init_kwargs", {}).get("do_lower_case", False))

    def provenance(self) -> dict[str, Any]:
        return {
            "backbone": self.name,
            "architecture": f"transformers {self.model_type}",
            **self.weights,
            "output": self.mode,
            "pooling": "pooler_output if present, else masked token mean" if self.mode == "pooled" else None,
            "layer": self.layer,
            "max_length": self.max_length,
            "tokenizer": type(self.tokenizer).__name__,
            "tokenizer_lowercase": self.lowercase,
            "vocab_sha256": self.vocab_sha,
            "timestamps": "NaN (no word timings)",
            "precision": self.runtime.precision,
        }

    @torch.inference_mode()
    def __call__(self, text: str, *, source: str = "") -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(text, str) or not text.strip():
            raise MediaError(f"{source or 'clip'}: no transcript")
        enc = self.tokenizer(text, truncation=True, max_length=self.max_length, return_tensors="pt")
        enc = {k: v.to(self.runtime.device) for k, v in enc.items()}
        with self.runtime.autocast():
            out = self.model(**enc, output_hidden_states=True)
        h = out.hidden_states[self.layer][0].float()
        if self.mode == "pooled":
            pooled = getattr(out, "pooler_output", None)
            h = (
                pooled[0].float()[None]
                if pooled is not None and self.layer == -1
                else h.mean(0, keepdim=True)
            )
        feats = h.cpu().numpy()
        return feats, np.full(len(feats), np.nan)


BACKBONES.register(
    BackboneCard(
        "text",
        TransformerText,
        TransformerTextConfig(),
        default_weights="bert-base-uncased",
        shape="[tokens, D]",
        rate="tokens",
        paper="BERT (HF)",
    )
)
BACKBONES.register(
    BackboneCard(
        "text.pooled",
        TransformerText,
        TransformerTextConfig(output="pooled"),
        default_weights="bert-base-uncased",
        shape="[1, D]",
        rate="one per clip",
        paper="BERT (HF), [CLS]-pooled",
    )
)
