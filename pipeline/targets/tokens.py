"""Caption words -> vocabulary ids -> normalised GloVe vectors (DESIGN 5.4); GloVe loading through gensim."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from shards.taxonomy import GLOVE_DIM, MAX_TOKEN_IDS, NUM_TOKENS, VOCAB_SIZE
from shards.vocab import Vocabulary

#: Over-represented scene words dropped besides gensim's stop words (DESIGN 5.4).
EXTRA_STOPWORDS = ("top", "next", "two", "front", "left", "right", "up", "down", "near", "while")
GLOVE_DOWNLOADER_NAME = "glove-wiki-gigaword-300"
_WORD = re.compile(r"[a-z]+")


def default_stopwords() -> frozenset[str]:
    """gensim's English stop words plus :data:`EXTRA_STOPWORDS`."""
    from gensim.parsing.preprocessing import STOPWORDS

    return frozenset(STOPWORDS) | frozenset(EXTRA_STOPWORDS)


def load_stopwords(source: str | os.PathLike | Iterable[str] | None = None) -> frozenset[str]:
    """Stop words: the default list, a file (one word per line, ``#`` comments; replaces the default) or words.

    Args:
        source: None for :func:`default_stopwords`, a path, or an iterable of words.

    Returns:
        Lower-case stop words.
    """
    if source is None:
        return default_stopwords()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"stop-word file not found: {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
        return frozenset(w.strip().lower() for w in lines if w.strip() and not w.lstrip().startswith("#"))
    return frozenset(w.lower() for w in source)


def tokenise(text: str) -> list[str]:
    """Lower-case a caption and split it into alphabetic words."""
    return _WORD.findall(text.lower())


def content_words(captions: Iterable[str], stopwords: frozenset[str], glove: Any) -> list[str]:
    """Every caption word (in caption order, with repeats) that is no stop word and has a GloVe vector."""
    return [w for text in captions for w in tokenise(text) if w not in stopwords and w in glove]


def count_words(caption_jsons: Iterable[Mapping[str, Any]], glove: Any, stopwords: frozenset[str]) -> Counter:
    """Occurrences of each content word over a split's ``caption.json`` dicts."""
    counts: Counter = Counter()
    for cj in caption_jsons:
        counts.update(content_words(cj.get("captions", []), stopwords, glove))
    return counts


def vocabulary_from_counts(counts: Counter, glove: Any, size: int = VOCAB_SIZE) -> Vocabulary:
    """The ``size`` most frequent words (ties broken alphabetically) with normalised GloVe vectors."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
    words = [w for w, _ in ranked]
    raw = np.stack([np.asarray(glove[w], np.float32) for w in words]) if words else np.zeros((0, GLOVE_DIM), np.float32)
    if raw.shape[1:] != (GLOVE_DIM,):
        raise ValueError(f"GloVe vectors must have {GLOVE_DIM} values, got {raw.shape[1:]}")
    peak = float(np.abs(raw).max()) if raw.size else 0.0
    scale = 1.0 / peak if peak > 0 else 1.0
    return Vocabulary(words, [c for _, c in ranked], scale, raw * np.float32(scale))


def image_token_ids(captions: Iterable[str], vocab: Vocabulary, limit: int = MAX_TOKEN_IDS) -> list[int]:
    """An image's vocabulary ids: by descending train count, ties in caption order, no duplicates, <= limit."""
    seen: dict[int, int] = {}
    for text in captions:
        for w in tokenise(text):
            i = vocab.id_of(w)
            if i is not None and i not in seen:
                seen[i] = len(seen)
    ordered = sorted(seen, key=lambda i: (-vocab.counts[i], seen[i]))
    return ordered[:limit]


def glove_array(ids: list[int], vocab: Vocabulary) -> np.ndarray:
    """(8, 300) float16 normalised vectors of the first 8 ids, zero padded."""
    out = np.zeros((NUM_TOKENS, GLOVE_DIM), np.float16)
    ids = ids[:NUM_TOKENS]
    if ids:
        out[:len(ids)] = vocab.vectors[ids].astype(np.float16)
    return out


def load_glove(path_or_name: str | os.PathLike) -> Any:
    """Load GloVe vectors with gensim.

    Args:
        path_or_name: a GloVe text file (``glove.6B.300d.txt``: no header line) or a gensim downloader
            name such as ``glove-wiki-gigaword-300``.

    Returns:
        gensim ``KeyedVectors`` (supports ``word in kv`` and ``kv[word]``).
    """
    path = Path(path_or_name)
    if path.is_file():
        from gensim.models import KeyedVectors

        try:
            return KeyedVectors.load_word2vec_format(str(path), binary=False, no_header=True)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"GloVe file {path} is not in GloVe text format: {e}") from None
    if os.sep in str(path_or_name) or str(path_or_name).endswith(".txt"):
        raise FileNotFoundError(f"GloVe file not found: {path_or_name}")
    import gensim.downloader

    try:
        return gensim.downloader.load(str(path_or_name))
    except (ValueError, OSError) as e:
        raise ValueError(f"cannot load GloVe {path_or_name!r} with gensim's downloader "
                         f"(name {GLOVE_DOWNLOADER_NAME!r}, or pass a local glove.6B.300d.txt): {e}") from None
