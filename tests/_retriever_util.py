"""Test helper: a random tiny BERT text tower written to a folder (a stand-in for a downloaded text encoder)."""

from __future__ import annotations

from pathlib import Path

from dcase.models.retriever import tiny_bert


def build_tiny_bert(path: str | Path, hidden: int = 32, layers: int = 2, vocab: list[str] | None = None) -> Path:
    """Write ``dcase.models.retriever.tiny_bert`` (config, weights, tokenizer) into ``path``; returns ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model, tok = tiny_bert(hidden, layers, vocab)
    tok.save_pretrained(str(path))
    model.save_pretrained(str(path))
    return path
