"""Caption tokens (DESIGN 5.4): stop words, vocabulary, per-image ids and order, GloVe vectors and decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.coco import load_split
from pipeline.demo import OMITTED_GLOVE_WORDS, glove_vector
from pipeline.samples import build_vocabulary, caption_sample, load_glove, tokens_sample
from pipeline.targets.tokens import default_stopwords, load_stopwords, tokenise
from shards.vocab import Vocabulary, decode_glove

WORDS = ("a the next cat sits red chair dog play grass dogs run car parked zebra "
         "ant bee cow elk fox gnu hen jay koi owl pig ram yak eel bat cod emu asp boa cub doe ewe gar hog").split()
TRAIN = [
    {"captions": ["A cat sits on a red chair.", "The cat is by a dog."], "source": "test"},
    {"captions": ["A dog and a cat play on the grass.", "Two dogs run on green grass."], "source": "test"},
    {"captions": ["A red car parked near the grass."], "source": "test"},
]


@pytest.fixture()
def glove() -> dict[str, np.ndarray]:
    return {w: glove_vector(w) for w in WORDS}  # "green" deliberately has no vector


def test_tokeniser_and_stop_words() -> None:
    assert tokenise("A man's T-shirt, 2 dogs!") == ["a", "man", "s", "t", "shirt", "dogs"]
    stop = default_stopwords()
    assert {"the", "a", "on", "is", "of", "with", "top", "two", "front"} <= stop and "cat" not in stop


#: Caption words the paper's own outputs show (its Fig. 6, "Response Text").
PAPER_OUTPUT_WORDS = ("around", "bus", "carriage", "down", "driving", "eating", "group", "horse", "large", "man",
                      "motorcycle", "next", "people", "plate", "red", "riding", "road", "sitting", "street", "table",
                      "truck", "woman")


def test_stop_list_keeps_every_word_of_the_papers_outputs() -> None:
    caption = "A man sitting next to a large group of people around a red table, eating from a plate"
    kept = [w for w in tokenise(caption) if w not in default_stopwords()]
    assert kept == ["man", "sitting", "next", "large", "group", "people", "around", "red", "table", "eating", "plate"]
    assert not set(PAPER_OUTPUT_WORDS) & default_stopwords()


def test_known_captions_give_expected_vocabulary_ids_and_order(glove) -> None:
    vocab = build_vocabulary(TRAIN, glove)
    # counts: cat 3, grass 3, dog 2, red 2, the rest 1; ties alphabetical; "green" has no vector
    assert vocab.words == ["cat", "grass", "dog", "red", "car", "chair", "dogs", "parked", "play", "run", "sits"]
    assert vocab.counts == [3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    ids = [tokens_sample(cj, vocab)["tokens.json"]["ids"] for cj in TRAIN]
    # by train frequency, ties in caption order: red before dog in image 0, cat before grass in image 1
    assert ids == [[0, 3, 2, 10, 5], [0, 1, 2, 8, 6, 9], [1, 3, 4, 7]]
    assert tokens_sample(TRAIN[0], vocab)["tokens.json"]["words"] == ["cat", "red", "dog", "sits", "chair"]


def test_vocabulary_size_and_normalisation(glove) -> None:
    vocab = build_vocabulary(TRAIN, glove, size=3)
    assert vocab.words == ["cat", "grass", "dog"]
    raw = np.stack([glove[w] for w in vocab.words])
    assert vocab.scale == pytest.approx(1.0 / np.abs(raw).max())
    assert np.abs(vocab.vectors).max() == pytest.approx(1.0)
    assert np.allclose(vocab.vectors, raw * vocab.scale)


def test_glove_array_is_first_eight_normalised_zero_padded(glove) -> None:
    vocab = build_vocabulary(TRAIN, glove)
    out = tokens_sample(TRAIN[0], vocab)["glove.npy"]
    assert out.dtype == np.float16 and out.shape == (8, 300)
    assert np.array_equal(out[:5], vocab.vectors[[0, 3, 2, 10, 5]].astype(np.float16))
    assert not out[5:].any()


def test_at_most_32_ids_and_no_duplicates(glove) -> None:
    many = [{"captions": [" ".join(WORDS[3:] * 2)]}]
    vocab = build_vocabulary(many, glove)
    ids = tokens_sample(many[0], vocab)["tokens.json"]["ids"]
    assert len(vocab) == len(WORDS) - 3 > 32
    assert len(ids) == 32 == len(set(ids))


def test_encode_then_decode_returns_the_same_words(glove) -> None:
    vocab = build_vocabulary(TRAIN, glove)
    for cj in TRAIN:
        sample = tokens_sample(cj, vocab)
        decoded = decode_glove(sample["glove.npy"], vocab)
        words = sample["tokens.json"]["words"][:8]
        assert [d[0] for d in decoded[:len(words)]] == words
        assert all(d[1] > 0.99 for d in decoded[:len(words)])
        assert decoded[len(words):] == [None] * (8 - len(words))


def test_decoder_thresholds(glove) -> None:
    vocab = build_vocabulary(TRAIN, glove)
    tiny = np.full((1, 300), 0.05, np.float32)  # mean square 0.0025 <= 0.003: empty slot
    unrelated = glove_vector("zebra")[None] * vocab.scale  # not in the vocabulary: low similarity
    assert decode_glove(tiny, vocab) == [None]
    assert decode_glove(unrelated, vocab) == [None]
    word, sim = decode_glove(unrelated, vocab, threshold=-1.0)[0]
    assert word in vocab.words and sim < 0.5


def test_val_uses_train_vocabulary(glove) -> None:
    vocab = build_vocabulary(TRAIN, glove)
    val = caption_sample({"captions": ["A zebra and a cat on the grass."]}, "caption-gt")["caption.json"]
    assert val == {"captions": ["A zebra and a cat on the grass."], "source": "caption-gt"}
    assert tokens_sample(val, vocab)["tokens.json"]["ids"] == [0, 1]  # zebra has a vector but is not in train


def test_stop_word_file_overrides_the_default(glove, tmp_path: Path) -> None:
    path = tmp_path / "stop.txt"
    path.write_text("# my list\ncat\n\nthe\n")
    assert load_stopwords(path) == {"cat", "the"}
    vocab = build_vocabulary(TRAIN, glove, stopwords=path)
    assert "cat" not in vocab.words and "a" in vocab.words
    with pytest.raises(FileNotFoundError, match="stop-word file"):
        load_stopwords(tmp_path / "nope.txt")


def test_vocabulary_json_round_trip(glove, tmp_path: Path) -> None:
    vocab = build_vocabulary(TRAIN, glove)
    vocab.save(tmp_path / "vocab.json")
    again = Vocabulary.load(tmp_path / "vocab.json")
    assert again.words == vocab.words and again.counts == vocab.counts and again.scale == vocab.scale
    assert np.array_equal(again.vectors, vocab.vectors)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        Vocabulary.load(tmp_path / "bad.json")


def test_a_failed_vocabulary_write_leaves_nothing_behind(glove, tmp_path: Path, monkeypatch) -> None:
    import errno
    import os

    vocab = build_vocabulary(TRAIN, glove)

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        vocab.save(tmp_path / "vocab.json")
    assert list(tmp_path.iterdir()) == []


def test_demo_glove_file(demo_root: Path) -> None:
    kv = load_glove(demo_root / "glove" / "glove.demo.300d.txt")
    assert kv.vector_size == 300 and "cat" in kv and "crema" not in kv
    assert np.allclose(kv["cat"], glove_vector("cat"), atol=1e-5)
    with pytest.raises(FileNotFoundError):
        load_glove(demo_root / "glove" / "missing.txt")


def test_glove_file_reads_exactly_what_gensim_reads(demo_root: Path, tmp_path: Path) -> None:
    from gensim.models import KeyedVectors

    path = tmp_path / "glove.txt"
    lines = (demo_root / "glove" / "glove.demo.300d.txt").read_text().splitlines()
    tricky = "tricky " + " ".join(["1.00000005960464477539", "-0", "3.4028235e38", "1.4e-45", "16777217"] * 60)
    path.write_text("\n".join([*lines, tricky, lines[0].split(" ")[0] + " 1" * 300]) + "\n")  # + a duplicate
    ours = load_glove(path)
    ref = KeyedVectors.load_word2vec_format(str(path), binary=False, no_header=True)
    assert list(ours.offsets) == list(ref.key_to_index) and len(ours) == len(lines) + 1
    for word in ref.key_to_index:  # bit-identical float32 values, the first of a duplicated word
        assert ours[word].dtype == np.float32 and ours[word].tobytes() == ref[word].tobytes()
    with pytest.raises(KeyError):
        ours["crema"]


def test_glove_file_with_a_short_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("cat 0.1 0.2 0.3\ndog 0.1 0.2\n")
    with pytest.raises(ValueError, match="bad.txt is not in GloVe text format: line 2 has 2 values"):
        load_glove(path)


def test_demo_captions_round_trip(demo_root: Path) -> None:
    kv = load_glove(demo_root / "glove" / "glove.demo.300d.txt")
    train = [{"captions": r.captions} for r in load_split(demo_root, "train2017")]
    vocab = build_vocabulary(train, kv)
    assert not set(OMITTED_GLOVE_WORDS) & set(vocab.words)
    assert vocab.counts == sorted(vocab.counts, reverse=True) and "cup" in vocab.words
    for r in load_split(demo_root, "val2017"):
        sample = tokens_sample({"captions": r.captions}, vocab)
        ids = sample["tokens.json"]["ids"]
        assert ids and all(0 <= i < len(vocab) for i in ids)
        assert [d[0] for d in decode_glove(sample["glove.npy"], vocab)[:len(ids[:8])]] == \
            sample["tokens.json"]["words"][:8]
