"""The fast inference path (``student.fastpath``): the host post-processing's results from the device step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shards.taxonomy import CHANNELS, GLOVE_DIM, JOINTS
from shards.vocab import Vocabulary
from student.cli import main
from student.fastpath import DevicePost, FastPredictor, host_peaks
from student.predict import Predictor
from student_scenes import SIZE, Fixed, photo as _photo, scene as _scene

@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    raw = np.random.default_rng(2).normal(size=(6, GLOVE_DIM)).astype(np.float32)
    scale = float(1 / np.abs(raw).max())
    return Vocabulary(list("abcdef"), [6, 5, 4, 3, 2, 1], scale, raw * scale)


def test_dilation_is_opencvs_elliptic_dilation() -> None:
    import cv2

    rng = np.random.default_rng(3)
    score = rng.random((1, 4, 37, 53)).astype(np.float32)
    score[0, 1, :, :9] = 0.0  # a plateau reaching the border
    got = DevicePost()._dilate(torch.from_numpy(score)).numpy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    expected = np.stack([cv2.dilate(s, kernel) for s in score[0]])[None]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("levels", [2, 4, 8])
def test_candidates_decide_the_peaks_or_say_they_cannot_with_ties_and_plateaus(levels: int) -> None:
    """Maps rounded to a few levels tie everywhere (plateaus of equal maxima): the device's candidates follow
    find_peaks' order exactly, so host_peaks gives its peaks, or None when the candidates run out first."""
    from student.postprocess import find_peaks

    rng = np.random.default_rng(levels)
    size, joints = 40, CHANNELS["joints"].slice
    valid = np.zeros((size, size), bool)
    valid[3:37] = True
    decided = undecided = 0
    for candidates in (8, 24, 64, 256):
        maps = rng.uniform(-1, 1, (1, 44, size, size)).astype(np.float32)
        maps[0, joints] = np.round(maps[0, joints] * levels) / levels
        out = DevicePost(0.3, candidates, "none")(torch.from_numpy(maps), torch.zeros(1, 8, GLOVE_DIM),
                                                  torch.from_numpy(valid)[None])
        got = host_peaks(*(out[k][0].numpy() for k in ("peak_score", "peak_pixel", "peak_xy", "peak_count")), size)
        if got is None:
            undecided += 1
            continue
        decided += 1
        for a, b in zip(got, find_peaks(maps[0, joints], threshold=0.3, valid=valid)):
            np.testing.assert_allclose(a, b, atol=1e-9)
    assert decided and undecided  # both branches ran


@pytest.mark.parametrize("threshold, candidates, host_frames", [
    (0.5, 64, 0),  # few maxima: all of them reach the host
    (0.1, 40, 0),  # ~70 maxima per joint, 40 kept: the strongest 20 peaks are decided among them
    (0.1, 16, 1),  # 16 kept cannot give 20 peaks: this frame's pose is post-processed on the host
])
def test_fast_post_processing_gives_the_host_results(vocab: Vocabulary, threshold: float, candidates: int,
                                                     host_frames: int) -> None:
    maps, tokens = _scene()
    photo = _photo()
    host = Predictor(Fixed(maps, tokens), SIZE, vocab, refine="paper", peak_threshold=threshold)(photo)
    fast = FastPredictor(Fixed(maps, tokens), SIZE, vocab, refine="paper", peak_threshold=threshold,
                         candidates=candidates, keep_maps=not host_frames)  # the fallback reads the device's maps
    got = fast(photo)
    assert fast.fallbacks == host_frames
    if threshold < 0.5:  # more maxima than candidates, yet no fallback in the second case
        valid = torch.from_numpy(got.geometry.valid_mask())[None]
        counts = fast.post(torch.from_numpy(maps)[None], torch.from_numpy(tokens)[None], valid)["peak_count"]
        assert int(counts.min()) > candidates
    assert len(host.people) >= 2 and len(got.people) == len(host.people)
    for p, q in zip(host.people, got.people):
        np.testing.assert_allclose(q.keypoints, p.keypoints, atol=1e-5, equal_nan=True)
        assert q.score == pytest.approx(p.score, abs=1e-6)
    raw = (maps[CHANNELS["depth"].start] + 1) / 2
    assert np.abs(host.depth - raw).max() > 1e-3  # the refinement moved the depth
    np.testing.assert_allclose(got.depth, host.depth, atol=1e-5)
    assert [w and w[0] for w in got.words] == [w and w[0] for w in host.words] != [None] * 8
    for w, v in zip(got.words, host.words):
        assert (w is None) == (v is None) and (w is None or w[1] == pytest.approx(v[1], abs=1e-5))
    if got.maps is not None:
        np.testing.assert_array_equal(got.maps, host.maps)


def test_without_refinement_and_without_maps(vocab: Vocabulary) -> None:
    maps, tokens = _scene()
    fast = FastPredictor(Fixed(maps, tokens), SIZE, None, refine="none", keep_maps=False)
    got = fast(_photo())
    np.testing.assert_array_equal(got.depth, (maps[CHANNELS["depth"].start] + 1) / 2)
    assert got.maps is None and got.words is None and got.people
    with pytest.raises(ValueError, match="kept no maps"):
        got.panel()
    with pytest.raises(ValueError, match="paper's rule or not at all"):
        FastPredictor(Fixed(maps, tokens), SIZE, refine="descent")
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        FastPredictor(Fixed(maps, tokens), SIZE, cuda_graph=True)
    with pytest.raises(ValueError, match="amp must be one of"):
        FastPredictor(Fixed(maps, tokens), SIZE, amp="fp8")


def test_a_batch_of_images_of_several_sizes_gives_each_its_own_results() -> None:
    maps, tokens = _scene()
    model = Fixed(maps, tokens)
    images = [_photo(), np.zeros((50, 200, 3), np.uint8), np.zeros((300, 120, 3), np.uint8)]
    host = Predictor(model, SIZE, refine="paper").predict_batch(images)
    fast = FastPredictor(model, SIZE, refine="paper").predict_batch(images)
    for a, b in zip(host, fast):
        assert a.geometry == b.geometry
        np.testing.assert_allclose(b.depth, a.depth, atol=1e-5)
        assert len(a.people) == len(b.people)
        for p, q in zip(a.people, b.people):
            np.testing.assert_allclose(q.keypoints, p.keypoints, atol=1e-5, equal_nan=True)
    assert len({len(p.people) for p in host}) > 1  # the letterbox borders hide different joints


def test_the_network_runs_channels_last_with_the_same_outputs(tiny_checkpoint: str) -> None:
    from student.checkpoint import load_checkpoint

    model, cfg, _ = load_checkpoint(tiny_checkpoint)
    photo = _photo()
    host = Predictor(model, cfg.image_size, refine="paper")(photo)
    twin, _, _ = load_checkpoint(tiny_checkpoint)
    fast = FastPredictor(twin, cfg.image_size, refine="paper", channels_last=True)
    got = fast(photo)
    convs = [m.weight for m in twin.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    np.testing.assert_allclose(got.maps, host.maps, atol=1e-5)
    np.testing.assert_allclose(got.tokens, host.tokens, atol=1e-5)
    np.testing.assert_allclose(got.depth, host.depth, atol=1e-5)


def test_bf16_autocast_changes_the_outputs_by_bf16_rounding_only(tiny_checkpoint: str) -> None:
    from student.checkpoint import load_checkpoint

    model, cfg, _ = load_checkpoint(tiny_checkpoint)
    photo = _photo()
    fp32 = FastPredictor(model, cfg.image_size, refine="none")(photo)
    bf16 = FastPredictor(model, cfg.image_size, refine="none", amp="bf16")(photo)
    diff = np.abs(bf16.maps - fp32.maps).max()
    assert 0 < diff < 0.05  # autocast ran (bf16 has 8 bits of mantissa), the outputs stay close
    assert bf16.maps.dtype == np.float32


def test_multihot_labels_are_the_hosts(vocab: Vocabulary) -> None:
    from dataclasses import replace

    from student.config import ModelConfig
    from student.model import YMapNet

    torch.manual_seed(0)
    model = YMapNet(replace(ModelConfig.tiny(SIZE), multihot_vocab=len(vocab))).eval()
    with torch.no_grad():
        model.multihot[-1].bias.fill_(0.5)  # labels above the paper's 0.25
    host = Predictor(model, SIZE, vocab, refine="none")(_photo())
    got = FastPredictor(model, SIZE, vocab, refine="none")(_photo())
    assert host.labels and [w for w, _ in got.labels] == [w for w, _ in host.labels]
    np.testing.assert_allclose([p for _, p in got.labels], [p for _, p in host.labels], atol=1e-6)


def test_predict_fast_writes_the_same_json(tmp_path, monkeypatch, vocab: Vocabulary) -> None:
    """The CLI on a stand-in network that draws a scene with people: --fast writes the same JSON (people, words)
    and maps to float tolerance."""
    import cv2

    import student.checkpoint
    from student.config import ModelConfig

    maps, tokens = _scene()
    monkeypatch.setattr(student.checkpoint, "load_checkpoint",
                        lambda *a, **k: (Fixed(maps, tokens), ModelConfig.tiny(SIZE), {}))
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), _photo()[..., ::-1])
    vocab.save(tmp_path / "vocab.json")
    plain, fast = tmp_path / "plain", tmp_path / "fast"
    common = ["--checkpoint", "stand-in.pt", str(photo), "--json", "--save-maps", "--vocab",
              str(tmp_path / "vocab.json"), "--word-threshold", "-1"]
    assert main(["predict", *common, "--out", str(plain)]) == 0
    assert main(["predict", *common, "--out", str(fast), "--fast"]) == 0
    a, b = json.loads((plain / "photo.json").read_text()), json.loads((fast / "photo.json").read_text())
    assert len(a["people"]) >= 2 and sum(w is not None for w in a["words"]) == 3 and len(a["joints"]) == len(JOINTS)
    assert a == b
    assert (fast / "photo.panel.png").is_file()
    with np.load(plain / "photo.maps.npz") as x, np.load(fast / "photo.maps.npz") as y:
        for key in ("maps", "depth", "tokens"):
            np.testing.assert_allclose(y[key], x[key], atol=1e-5)


def test_predict_fast_refuses_the_descent_refinement(tiny_checkpoint: str, tmp_path, capsys) -> None:
    assert main(["predict", "--checkpoint", tiny_checkpoint, str(tmp_path), "--amp", "bf16",
                 "--refine", "descent"]) == 2
    assert "--refine paper or none" in capsys.readouterr().err


def test_the_steps_trace_as_single_graphs(tiny_checkpoint: str, vocab: Vocabulary) -> None:
    """No host synchronisation or data-dependent shape in either step (network included): torch.compile's tracer
    finds no graph break, which a CUDA graph capture needs as well."""
    from student.checkpoint import load_checkpoint

    model, cfg, _ = load_checkpoint(tiny_checkpoint)
    fast = FastPredictor(model, cfg.image_size, vocab, refine="paper", channels_last=True, amp="bf16")
    nhwc = torch.zeros((2, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8)
    valid = torch.ones((2, cfg.image_size, cfg.image_size), dtype=torch.bool)
    with torch.no_grad():
        first = torch._dynamo.explain(fast._step)(nhwc, valid)
        maps = fast._step(nhwc, valid)["maps"]
        second = torch._dynamo.explain(fast.post.support)(maps, torch.zeros((2, len(JOINTS), 20, 2)))
    assert first.graph_count == 1 and first.graph_break_count == 0, first.break_reasons
    assert second.graph_count == 1 and second.graph_break_count == 0, second.break_reasons


@pytest.mark.slow
def test_compiled_step_gives_the_eager_results(tiny_checkpoint: str) -> None:
    from student.checkpoint import load_checkpoint

    model, cfg, _ = load_checkpoint(tiny_checkpoint)
    photo = _photo()
    eager = FastPredictor(model, cfg.image_size, refine="paper")(photo)
    twin, _, _ = load_checkpoint(tiny_checkpoint)
    compiled = FastPredictor(twin, cfg.image_size, refine="paper", channels_last=True, compile=True)(photo)
    np.testing.assert_allclose(compiled.maps, eager.maps, atol=1e-4)
    np.testing.assert_allclose(compiled.depth, eager.depth, atol=1e-4)
