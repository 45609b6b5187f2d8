"""Corpus adapters: one file per corpus, each registered in :data:`CORPORA`."""

from avx.corpora.base import CORPORA, CorpusMetadata, load_corpus

__all__ = ["CORPORA", "CorpusMetadata", "load_corpus"]
