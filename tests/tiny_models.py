"""Tiny random-weight checkpoints, saved the way users' checkpoints are saved.

transformers models go through ``save_pretrained`` (a folder, loaded back by the same
``--weights FOLDER`` code path as a downloaded model); the others are state dicts in
their official layouts (``{'state_dict'}`` + ``module.`` for EfficientFace, EmoNet's
plain dict, torchvggish's plain dict).
"""

from __future__ import annotations

from pathlib import Path

import torch

CONV = {"conv_dim": (16,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}


def save_speech_model(arch: str, folder: Path, **overrides) -> Path:
    """A tiny wav2vec2 / wavlm / hubert in ``folder`` (config + safetensors + preprocessor)."""
    from avx.extract.backbones.hf_audio import save_random_model

    return save_random_model(arch, folder, **{**CONV, **TINY, **overrides})


WORDS = [
    "it's",
    "eleven",
    "o'clock",
    "that",
    "is",
    "exactly",
    "what",
    "happened",
    "i'm",
    "on",
    "my",
    "way",
    "to",
    "the",
    "meeting",
]


def save_text_model(folder: Path) -> Path:
    """A tiny BERT with a WordPiece vocabulary covering the CREMA-D sentences' words."""
    import transformers as tf

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set("".join(WORDS))), "'", "##s"]
    vocab += sorted({w for word in WORDS for w in word.replace("'", " ' ").split()})
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tok = tf.BertTokenizer(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=len(tok), max_position_embeddings=64, **TINY)
    tf.BertModel(cfg).save_pretrained(folder)
    return folder
