"""`student predict`: panels and JSON for a real photo, a folder and a video, with a tiny random checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shards.codecs import encode_png
from shards.geometry import Letterbox, letterbox_image
from shards.taxonomy import CHANNELS, GLOVE_DIM, JOINTS, NUM_TOKENS
from shards.vocab import Vocabulary
from student.cli import main
from student.predict import Predictor, read_image
from student.targets import TargetSizes, render_heatmaps, render_pafs

SIZE = 64
WORDS = ["astronaut", "flag", "woman", "space", "suit", "smiling"]


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(len(WORDS), GLOVE_DIM)).astype(np.float32)
    scale = float(1 / np.abs(raw).max())
    path = tmp_path_factory.mktemp("vocab") / "vocab.json"
    Vocabulary(WORDS, [60, 50, 40, 30, 20, 10], scale, raw * scale).save(path)
    return str(path)


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory: pytest.TempPathFactory) -> str:
    import cv2
    from skimage import data

    image = data.astronaut()[:, 40:480]  # 512 x 440: not square, so the letterbox has a border
    path = tmp_path_factory.mktemp("photos") / "astronaut.jpg"
    cv2.imwrite(str(path), image[..., ::-1].copy())
    return str(path)


def test_predict_photo_writes_panel_and_json(tiny_checkpoint: str, vocab_path: str, astronaut: str, tmp_path) -> None:
    import cv2

    out = tmp_path / "out"
    rc = main(["predict", "--checkpoint", tiny_checkpoint, astronaut, "--out", str(out), "--json",
               "--vocab", vocab_path, "--word-threshold", "-1"])
    assert rc == 0
    panel = read_image(out / "astronaut.panel.png")
    assert panel.shape == (2 * 256, 4 * 256, 3)
    photo = read_image(astronaut)
    # the first tile is the 64-pixel letterboxed input shown 4x: black bars left and right, the photo between
    box = Letterbox.fit(photo.shape[1], photo.shape[0], SIZE)
    bar = box.offset[0] * 256 // SIZE
    assert bar > 0 and panel[128, : bar - 3].max() < 30
    expected = cv2.resize(letterbox_image(photo, box), (256, 256), interpolation=cv2.INTER_LINEAR)
    assert np.abs(panel[40:256, bar + 4:256 - bar - 4].astype(int) - expected[40:, bar + 4:256 - bar - 4]).mean() < 3
    # output tiles (normals, depth; joints, PAFs, groups) are black on the padding, not the network's guesses
    for row, col in ((0, 1), (0, 2), (1, 0), (1, 1)):
        t = panel[row * 256 + 40:(row + 1) * 256, col * 256:(col + 1) * 256]
        assert t[:, : bar - 3].max() == 0 and t[:, 256 - bar + 3:].max() == 0
        assert t[:, bar + 4:256 - bar - 4].max() > 0
    doc = json.loads((out / "astronaut.json").read_text())
    assert doc["size"] == [440, 512] and doc["joints"] == list(JOINTS)
    assert len(doc["words"]) == NUM_TOKENS
    for w in doc["words"]:  # threshold -1: every non-empty slot decodes to a vocabulary word
        assert w is None or (w["word"] in WORDS and -1.0 <= w["score"] <= 1.0 and w["kept"])
    assert doc["input"] == astronaut and doc["coco_id"] is None and doc["labels"] is None


def test_json_names_its_input_keeps_low_scores_and_maps_can_be_saved(tmp_path, vocab_path: str) -> None:
    import cv2

    from student.checkpoint import save_checkpoint
    from student.config import ModelConfig
    from student.model import YMapNet

    torch.manual_seed(0)
    cfg = ModelConfig.tiny(SIZE)
    cfg = type(cfg).from_dict({**cfg.to_dict(), "multihot_vocab": len(WORDS)})
    model = YMapNet(cfg)
    with torch.no_grad():  # a head that is sure of word 2 ("woman") and of nothing else
        model.multihot[-1].weight.zero_()
        model.multihot[-1].bias.fill_(-5.0)
        model.multihot[-1].bias[2] = 5.0
    ckpt = tmp_path / "head.pt"
    save_checkpoint(ckpt, model, cfg)
    image = tmp_path / "000000000139.jpg"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ckpt), str(image), "--out", str(out), "--json", "--vocab",
                 vocab_path, "--word-threshold", "1.0", "--no-panel", "--save-maps"]) == 0
    assert not (out / "000000000139.panel.png").exists()
    doc = json.loads((out / "000000000139.json").read_text())
    assert doc["input"] == str(image) and doc["coco_id"] == 139
    words = [w for w in doc["words"] if w is not None]
    assert words and all(w["word"] in WORDS and not w["kept"] for w in words)  # scores below 1.0 are kept too
    assert doc["labels"] == [{"word": "woman", "score": pytest.approx(0.9933, abs=1e-4)}]
    saved = np.load(out / "000000000139.maps.npz")
    assert saved["maps"].shape == (44, SIZE, SIZE) and saved["tokens"].shape == (8, 300)
    assert saved["depth"].shape == (SIZE, SIZE)
    # the panel shows the head's labels as the paper's "Response Text"
    assert main(["predict", "--checkpoint", str(ckpt), str(image), "--out", str(out), "--vocab", vocab_path]) == 0
    panel = read_image(out / "000000000139.panel.png")
    words_tile = panel[256:, 3 * 256:]
    assert (np.abs(words_tile[:, 128:].astype(int) - [255, 230, 120]).sum(axis=-1) < 60).any()
    for person in doc["people"]:
        assert len(person["keypoints"]) == len(JOINTS) and all(len(k) == 3 for k in person["keypoints"])


#: a standing person: (x, y) of the 17 COCO joints as fractions of their box
STANDING = np.array([(0.50, 0.08), (0.55, 0.05), (0.45, 0.05), (0.60, 0.07), (0.40, 0.07), (0.70, 0.24),
                     (0.30, 0.24), (0.82, 0.40), (0.18, 0.40), (0.88, 0.55), (0.12, 0.55), (0.62, 0.56),
                     (0.38, 0.56), (0.64, 0.77), (0.36, 0.77), (0.65, 0.96), (0.35, 0.96)])


def _drawing(truth: np.ndarray) -> torch.nn.Module:
    """A stand-in network whose maps are the heatmaps and PAFs rendered from ``truth`` (P, 17, 3) store pixels."""
    radius, width = TargetSizes().at(None)

    class Drawing(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            maps = -torch.ones(images.shape[0], 44, SIZE, SIZE)
            maps[:, CHANNELS["joints"].slice] = torch.from_numpy(render_heatmaps(truth, SIZE, radius))
            maps[:, CHANNELS["pafs"].slice] = torch.from_numpy(render_pafs(truth, SIZE, width))
            return {"maps": maps, "tokens": torch.zeros(images.shape[0], NUM_TOKENS, GLOVE_DIM)}

    return Drawing()


def test_json_people_are_in_original_pixels(tiny_checkpoint: str) -> None:
    """A model that outputs rendered maps of a known person: JSON keypoints land on the person in the photo."""
    from student.checkpoint import load_checkpoint

    model, cfg, _ = load_checkpoint(tiny_checkpoint)
    photo = np.zeros((300, 200, 3), np.uint8)  # letterboxed into 64 x 64 with side bars
    box = Letterbox.fit(200, 300, SIZE)
    # a standing person in the photo, in a box at (50, 30) of 100 x 240 pixels
    in_photo = np.array([50.0, 30.0]) + STANDING * [100.0, 240.0]
    truth = np.ones((1, len(JOINTS), 3), np.float32)
    truth[0, :, :2] = box.to_store(in_photo)

    pred = Predictor(_drawing(truth), cfg.image_size, refine="none")(photo)
    doc = pred.to_json()
    assert len(doc["people"]) == 1
    got = np.array([k[:2] for k in doc["people"][0]["keypoints"]], float)
    expected = in_photo - 0.5  # continuous coordinates -> COCO's pixel indices
    # 1 store pixel is 300 / 64 = 4.7 original pixels
    assert np.abs(got - expected).max() <= 300 / SIZE


def test_predict_folder_and_video(tiny_checkpoint: str, tmp_path) -> None:
    import cv2

    folder = tmp_path / "inputs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    cv2.imwrite(str(folder / "a.png"), rng.integers(0, 256, (50, 80, 3), dtype=np.uint8))
    writer = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 72))
    for _ in range(3):
        writer.write(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8))
    writer.release()
    (folder / "notes.txt").write_text("not an input")
    other = tmp_path / "other"
    other.mkdir()
    cv2.imwrite(str(other / "a.jpg"), rng.integers(0, 256, (30, 20, 3), dtype=np.uint8))
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", tiny_checkpoint, str(folder), str(other / "a.jpg"), "--out", str(out),
                 "--json", "--tile", "128"]) == 0
    assert read_image(out / "a.panel.png").shape == (256, 512, 3)
    # the second a.* does not overwrite the first
    assert json.loads((out / "a.json").read_text())["size"] == [80, 50]
    assert json.loads((out / "a_.json").read_text())["size"] == [20, 30]
    doc = json.loads((out / "clip.json").read_text())
    assert len(doc["frames"]) == 3 and all(f["words"] is None and f["size"] == [96, 72] for f in doc["frames"])
    cap = cv2.VideoCapture(str(out / "clip.panel.mp4"))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (256, 512, 3) and frames == 3


def test_usage_errors(tiny_checkpoint: str, tmp_path) -> None:
    assert main(["predict", "--checkpoint", tiny_checkpoint, str(tmp_path / "missing.jpg")]) == 2
    assert main(["predict", "--checkpoint", str(tmp_path / "none.pt"), str(tmp_path)]) == 2
    assert main(["predict", "--checkpoint", tiny_checkpoint, str(tmp_path)]) == 2  # empty folder
    image = tmp_path / "a.png"
    image.write_bytes(encode_png(np.zeros((20, 30, 3), np.uint8)))
    assert main(["predict", "--checkpoint", tiny_checkpoint, str(image), "--out", str(tmp_path / "out")]) == 0
    for flag, value in (("--joint-threshold", "-1"), ("--word-threshold", "5"), ("--joint-threshold", "nan")):
        assert main(["predict", "--checkpoint", tiny_checkpoint, str(image), flag, value]) == 2


@pytest.mark.parametrize(("w", "h"), [(640, 480), (333, 500), (64, 64), (40, 30), (701, 333)])
def test_predict_input_is_the_store_letterbox(tiny_checkpoint: str, w: int, h: int) -> None:
    """predict feeds the model exactly the store's letterbox (shards.geometry), pixel for pixel."""
    from student.checkpoint import load_checkpoint

    model, _, _ = load_checkpoint(tiny_checkpoint)
    image = np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    pred = Predictor(model, SIZE, refine="none")(image)
    box = Letterbox.fit(w, h, SIZE)
    assert pred.geometry == box and pred.to_json()["size"] == [w, h]
    np.testing.assert_array_equal(pred.image, letterbox_image(image, box))


# ---- a new-user review: failures are reported, inputs decode as the store decodes them ---------------------


def _errors(err: str) -> list[str]:
    """stderr without the note that no vocabulary was found."""
    return [line for line in err.strip().splitlines() if not line.startswith("note: no vocabulary")]


def _clip(path, frames: int = 2) -> None:
    import cv2

    rng = np.random.default_rng(2)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (48, 32))
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    writer.release()


def test_a_video_panel_that_cannot_be_written_is_an_error(tiny_checkpoint: str, astronaut: str, tmp_path,
                                                          capsys) -> None:
    clip = tmp_path / "clip.mp4"
    _clip(clip)
    out = tmp_path / "out"
    (out / "clip.panel.mp4").mkdir(parents=True)  # the MP4 cannot be created there
    assert main(["predict", "--checkpoint", tiny_checkpoint, str(clip), astronaut, "--out", str(out),
                 "--tile", "32"]) == 1
    captured = capsys.readouterr()
    assert _errors(captured.err) == [f"error: {clip}: could not write {out / 'clip.panel.mp4'}"]
    assert captured.out.splitlines() == [f"{astronaut} -> {out / 'astronaut.panel.png'}"]  # the next input ran


def test_tile_has_an_upper_bound_and_an_opencv_failure_fails_one_input(tiny_checkpoint: str, tmp_path, capsys,
                                                                       monkeypatch) -> None:
    import cv2

    import student.predict as predict_module

    image = tmp_path / "a.png"
    image.write_bytes(encode_png(np.zeros((20, 30, 3), np.uint8)))
    assert main(["predict", "--checkpoint", tiny_checkpoint, str(image), "--tile", "100000"]) == 2
    assert capsys.readouterr().err.strip() == "student predict: error: --tile must be <= 1024, got 100000"
    other = tmp_path / "b.png"
    other.write_bytes(encode_png(np.zeros((20, 30, 3), np.uint8)))
    real_write = predict_module.write_png

    def fail_first(path, rgb):  # what OpenCV raises when a buffer cannot be allocated
        if path.name.startswith("a."):
            raise cv2.error("OpenCV(5.0.0) /io/alloc.cpp:73: error: (-4:Insufficient memory) Failed to allocate "
                            "1228800000000 bytes in function 'OutOfMemoryError'\n")
        real_write(path, rgb)

    monkeypatch.setattr(predict_module, "write_png", fail_first)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", tiny_checkpoint, str(image), str(other), "--out", str(out),
                 "--tile", "16"]) == 1
    captured = capsys.readouterr()
    assert _errors(captured.err) == [(f"error: {image}: OpenCV: (-4:Insufficient memory) Failed to allocate "
                                      "1228800000000 bytes in function 'OutOfMemoryError'")]
    assert captured.out.strip() == f"{other} -> {out / 'b.panel.png'}"  # the next input still ran


def test_a_folder_takes_gif_images_as_a_named_gif_does(tiny_checkpoint: str, tmp_path) -> None:
    from PIL import Image

    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.fromarray(np.full((24, 40, 3), 90, np.uint8)).save(folder / "anim.GIF")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", tiny_checkpoint, str(folder), "--out", str(out), "--json",
                 "--tile", "16"]) == 0
    assert json.loads((out / "anim.json").read_text())["size"] == [40, 24]


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_read_image_composites_alpha_on_black_and_rounds_16_bits_like_the_store(tmp_path) -> None:
    """Predict reads its inputs with the base stage's decoder (shards.images): these are its pixel values."""
    import io

    import cv2
    from PIL import Image

    cases: dict[str, tuple[bytes, list]] = {}
    # RGBA: (c * a + 127) // 255 on black; a fully transparent pixel is black whatever its colour
    rgba = np.array([[[200, 100, 50, 128], [10, 250, 30, 255], [255, 255, 255, 0]]], np.uint8)
    cases["rgba.png"] = (_png(Image.fromarray(rgba, "RGBA")), [[100, 50, 25], [10, 250, 30], [0, 0, 0]])
    la = np.array([[[200, 128], [50, 0]]], np.uint8)
    cases["la.png"] = (_png(Image.fromarray(la, "LA")), [[100, 100, 100], [0, 0, 0]])
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.putdata([0, 1])
    buf = io.BytesIO()
    palette.save(buf, "PNG", transparency=0)
    cases["palette.png"] = (buf.getvalue(), [[0, 0, 0], [0, 255, 0]])
    buf = io.BytesIO()
    palette.save(buf, "GIF", transparency=0)
    cases["palette.gif"] = (buf.getvalue(), [[0, 0, 0], [0, 255, 0]])
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "WEBP", lossless=True)
    cases["rgba.webp"] = (buf.getvalue(), [[100, 50, 25], [10, 250, 30], [0, 0, 0]])
    # 16 bits: the high byte, rounded, (v + 128) // 257 (OpenCV's own conversion would give 0 and 255)
    grey16 = np.array([[255, 65280, 32896, 65535]], np.uint16)
    cases["grey16.png"] = (cv2.imencode(".png", grey16)[1].tobytes(), [[v] * 3 for v in (1, 254, 128, 255)])
    bgra16 = np.array([[[65280, 255, 65535, 65535], [65535, 65535, 65535, 32896]]], np.uint16)
    cases["bgra16.png"] = (cv2.imencode(".png", bgra16)[1].tobytes(), [[255, 1, 254], [128, 128, 128]])
    for name, (data, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        got = read_image(path)
        assert got.dtype == np.uint8 and got.tolist() == [expected], name


def test_predict_letterboxes_a_transparent_image_as_the_store_does(tiny_checkpoint: str, tmp_path) -> None:
    from PIL import Image

    from student.checkpoint import load_checkpoint

    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., :3] = 255  # white, transparent except a half-opaque band
    rgba[10:20, :, 3] = 128
    path = tmp_path / "logo.png"
    path.write_bytes(_png(Image.fromarray(rgba, "RGBA")))
    model, _, _ = load_checkpoint(tiny_checkpoint)
    pred = Predictor(model, SIZE, refine="none")(read_image(path))
    composite = np.zeros((40, 50, 3), np.uint8)
    composite[10:20] = 128  # (255 * 128 + 127) // 255
    np.testing.assert_array_equal(pred.image, letterbox_image(composite, Letterbox.fit(50, 40, SIZE)))


def test_no_joint_is_found_on_the_letterbox_border(tiny_checkpoint: str) -> None:
    """A network that draws a whole person on the padding: predict finds nobody there, and no peak."""
    from student.checkpoint import load_checkpoint

    _, cfg, _ = load_checkpoint(tiny_checkpoint)
    photo = np.zeros((300, 100, 3), np.uint8)  # 21 pixels of content in the middle of 64, bars of 21 and 22
    box = Letterbox.fit(100, 300, SIZE)
    assert box.offset_x == 21
    truth = np.ones((1, len(JOINTS), 3), np.float32)
    truth[0, :, :2] = np.array([1.0, 4.0]) + STANDING * [18.0, 56.0]  # store pixels, all in the left bar

    pred = Predictor(_drawing(truth), cfg.image_size, refine="none")(photo)
    assert pred.people == []
    from student.postprocess import find_peaks

    unmasked = find_peaks(pred.maps[CHANNELS["joints"].slice])  # the person is there without the mask
    assert sum(len(p) for p in unmasked) == len(JOINTS)
