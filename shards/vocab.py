"""Caption vocabulary (``vocab.json``, DESIGN 5.4) and decoding of GloVe token vectors back to words (numpy only)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from shards.atomic import atomic_write_bytes
from shards.errors import parse_json
from shards.streams import read_bytes
from shards.taxonomy import GLOVE_DIM

VOCAB_FORMAT = "ymap-vocab/1"
NEAR_ZERO_MEAN_SQUARE = 0.003  # a slot with mean square <= this is empty (DESIGN 5.4)
DEFAULT_DECODE_THRESHOLD = 0.5  # minimum cosine similarity for a decoded word


@dataclass(frozen=True)
class Vocabulary:
    """The split's caption vocabulary: words by descending train frequency, with normalised GloVe vectors.

    Attributes:
        words: the vocabulary; a word's id is its index.
        counts: train-split occurrence count of each word.
        scale: normalisation factor applied to the raw GloVe vectors (1 / max |v| over the vocabulary).
        vectors: (V, 300) float32, raw GloVe vectors times ``scale`` (so in [-1, 1]).
    """

    words: list[str]
    counts: list[int]
    scale: float
    vectors: np.ndarray
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        vectors = np.asarray(self.vectors, np.float32).reshape(-1, GLOVE_DIM) if len(self.words) else \
            np.zeros((0, GLOVE_DIM), np.float32)
        if not (len(self.words) == len(self.counts) == len(vectors)):
            raise ValueError(f"vocabulary needs as many counts and vectors as words: {len(self.words)} words, "
                             f"{len(self.counts)} counts, {len(vectors)} vectors")
        if len(set(self.words)) != len(self.words):
            raise ValueError("vocabulary words must be unique")
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "index", {w: i for i, w in enumerate(self.words)})

    def __len__(self) -> int:
        return len(self.words)

    def id_of(self, word: str) -> int | None:
        """Id of a word, or None when it is not in the vocabulary."""
        return self.index.get(word)

    def to_json(self) -> dict:
        """The ``vocab.json`` dict."""
        return {"format": VOCAB_FORMAT, "dim": GLOVE_DIM, "scale": float(self.scale),
                "words": list(self.words), "counts": [int(c) for c in self.counts],
                "vectors": [[float(x) for x in row] for row in self.vectors]}

    def save(self, path: str | os.PathLike) -> None:
        """Write ``vocab.json`` atomically (``shards.atomic``: nothing is left behind if the write fails)."""
        atomic_write_bytes(path, json.dumps(self.to_json(), separators=(",", ":")).encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        """Read a ``vocab.json``; a missing or malformed file raises ValueError naming it."""
        try:
            data = parse_json(read_bytes(os.fspath(path)))
            if not isinstance(data, dict):
                raise ValueError(f"a JSON {type(data).__name__}, not an object")
            if data.get("format") != VOCAB_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {VOCAB_FORMAT!r}")
            return cls(list(data["words"]), [int(c) for c in data["counts"]], float(data["scale"]),
                       np.asarray(data["vectors"], np.float32))
        except FileNotFoundError:
            raise ValueError(f"vocabulary file not found: {path}") from None
        except (OSError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"vocabulary file {path} is malformed: {e}") from None


def decode_glove(vectors: np.ndarray, vocab: Vocabulary,
                 threshold: float = DEFAULT_DECODE_THRESHOLD) -> list[tuple[str, float] | None]:
    """Turn token vectors back into words (DESIGN 5.4).

    A slot whose mean square is <= 0.003 is empty; otherwise it becomes the vocabulary word of highest
    cosine similarity, kept only when that similarity is >= ``threshold``.

    Args:
        vectors: (T, 300) token vectors (e.g. the (8, 300) ``glove.npy`` or the student's output).
        vocab: the vocabulary the vectors were made with.
        threshold: minimum cosine similarity.

    Returns:
        One entry per slot: ``(word, similarity)`` or None.
    """
    v = np.asarray(vectors, np.float32).reshape(-1, GLOVE_DIM)
    if len(vocab) == 0:
        return [None] * len(v)
    table = vocab.vectors / np.maximum(np.linalg.norm(vocab.vectors, axis=1, keepdims=True), 1e-12)
    out: list[tuple[str, float] | None] = []
    for row in v:
        if float(np.mean(row * row)) <= NEAR_ZERO_MEAN_SQUARE:
            out.append(None)
            continue
        sims = table @ (row / max(float(np.linalg.norm(row)), 1e-12))
        best = int(np.argmax(sims))
        out.append((vocab.words[best], float(sims[best])) if sims[best] >= threshold else None)
    return out
