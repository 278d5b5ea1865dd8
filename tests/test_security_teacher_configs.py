"""Untrusted inputs: the sizes a DPText-DETR or VisionGPT2 checkpoint declares are data. Each test tampers a tiny
legitimate checkpoint and checks that the user gets one line naming the file and the field or tensor, and that no
model was built from sizes its tensors do not fill (only the meta-device shell, or nothing at all)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from teachers import TeacherError, create_teacher, dptext_detr, visiongpt2
from teachers.dptext_detr import PREFIX, load_dptext_detr
from teachers.dptext_detr_model import LIMITS as DPTEXT_LIMITS
from teachers.dptext_detr_model import DPTextConfig, DPTextDETR
from teachers.visiongpt2 import load_visiongpt2
from teachers.visiongpt2_model import LIMITS as VISIONGPT2_LIMITS
from teachers.visiongpt2_model import VisionGPT2, VisionGPT2Config

ROOT = Path(__file__).resolve().parents[1]

#: In-bounds sizes whose model is about 2 GB of float32 (checked below), asked for by a file of a few hundred KB.
BIG_DPTEXT = {"d_model": 2048, "dim_feedforward": 8192, "enc_layers": 3, "dec_layers": 3}
BIG_VISIONGPT2 = {"embed_dim": 2048, "num_heads": 16, "depth": 4}


def _one_line(err: pytest.ExceptionInfo, *needles: str) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    return text


def _model_bytes(model_class, cfg) -> int:
    with torch.device("meta"):
        model = model_class(cfg)
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.fixture()
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The device of every DPTextDETR / VisionGPT2 the loaders build, in order ("meta" for the shape check)."""
    seen: list[str] = []
    for module, name in ((dptext_detr, "DPTextDETR"), (visiongpt2, "VisionGPT2")):
        real = getattr(module, name)

        def make(cfg, _real=real):
            model = _real(cfg)
            seen.append(next(model.parameters()).device.type)
            return model

        monkeypatch.setattr(module, name, make)
    return seen


# ---------------------------------------------------------------------------------------------------- DPText-DETR


@pytest.fixture(scope="module")
def dptext_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    return dptext_detr.save_tiny_checkpoint(tmp_path_factory.mktemp("dptext"), seed=0)


_KEEP = object()


def _tampered_dptext(src: str, dst: Path, config=_KEEP, **changes) -> Path:
    obj = torch.load(src, weights_only=True)
    obj["config"] = config if config is not _KEEP else {**obj["config"], **changes}
    torch.save(obj, dst)
    return dst


@pytest.mark.parametrize("changes, needle", [
    ({"d_model": 200_000}, "config field 'd_model' must be an integer in 32..2048, got 200000"),
    ({"num_queries": 10**9}, "config field 'num_queries' must be an integer in 1..1000"),
    ({"enc_layers": 10**6}, "config field 'enc_layers' must be an integer in 1..24"),
    ({"dim_feedforward": 2**40}, "config field 'dim_feedforward'"),
    ({"d_model": 10**600}, "config field 'd_model' must be an integer in 32..2048, got an integer of 1994 bits"),
    ({"resnet_blocks": [1, 10**6, 1, 1]}, "config field 'resnet_blocks' must be 4 integers in 1..64"),
    ({"resnet_blocks": [1, 1, 1]}, "config field 'resnet_blocks' must be 4 integers"),
    ({"resnet_blocks": 3}, "config field 'resnet_blocks' must be 4 integers"),
    ({"n_heads": True}, "config field 'n_heads' must be an integer in 1..64, got True"),
    ({"d_model": 64.0}, "config field 'd_model' must be an integer in 32..2048, got 64.0"),
    ({"stem_channels": -8}, "config field 'stem_channels' must be an integer in 1..512, got -8"),
    ({"bottleneck_channels": "8"}, "config field 'bottleneck_channels' must be an integer in 1..1024, got '8'"),
    ({"num_ctrl_points": None}, "config field 'num_ctrl_points'"),
    ({"num_feature_levels": 5}, "config field 'num_feature_levels' must be an integer in 4..4"),
    ({"d_model": 96, "n_heads": 64}, "config field 'd_model' 96 is not divisible by 'n_heads' 64"),
    ({"d_model": 48}, "config field 'd_model' 48 is not a multiple of 32"),
    ({"num_ctrl_points": 15}, "config field 'num_ctrl_points' 15 is odd"),
    ({"hidden_dim": 256}, "unknown config field 'hidden_dim'"),
])
def test_dptext_sizes_out_of_bounds_or_of_the_wrong_type_build_nothing(dptext_ckpt, tmp_path, builds, changes,
                                                                        needle) -> None:
    path = _tampered_dptext(dptext_ckpt, tmp_path / "bad.pth", **changes)
    with pytest.raises(TeacherError) as err:
        load_dptext_detr(path)
    _one_line(err, "teacher 'dptext-detr'", str(path), needle)
    assert builds == []  # refused before any model, even on the meta device


@pytest.mark.parametrize("config", [[256, 8], "d_model=200000", None, torch.tensor([256, 8])])
def test_dptext_config_that_is_no_mapping_is_one_line(dptext_ckpt, tmp_path, builds, config) -> None:
    path = _tampered_dptext(dptext_ckpt, tmp_path / "bad.pth", config=config)
    with pytest.raises(TeacherError) as err:
        create_teacher("dptext-detr", checkpoint=str(path))
    _one_line(err, str(path), f"its config is a {type(config).__name__}, not a mapping")
    assert builds == []


@pytest.mark.parametrize("changes, needle", [
    ({"d_model": 128}, ("key 'dptext_detr.input_proj.0.0.weight' has shape (64, 64, 1, 1), the model needs "
                        "(128, 64, 1, 1)")),
    ({"enc_layers": 3}, "missing key 'dptext_detr.transformer.encoder.layers.2."),
    ({"dec_layers": 1}, "unexpected key 'dptext_detr."),
    ({"num_ctrl_points": 24}, ("key 'dptext_detr.ctrl_point_embed.weight' has shape (16, 64), the model needs "
                               "(24, 64)")),
    ({"res2_channels": 64}, "key 'dptext_detr.backbone.0.backbone.res2.0.shortcut.weight' has shape"),
    (BIG_DPTEXT, "missing key 'dptext_detr.transformer.decoder.layers.2."),
])
def test_dptext_sizes_in_bounds_that_do_not_fit_the_tensors_name_one(dptext_ckpt, tmp_path, builds, changes,
                                                                      needle) -> None:
    path = _tampered_dptext(dptext_ckpt, tmp_path / "wide.pth", **changes)
    with pytest.raises(TeacherError) as err:
        load_dptext_detr(path)
    _one_line(err, f"checkpoint {path} does not match the model its sizes describe", needle)
    assert builds == ["meta"]  # compared on the meta device, never built for real


def test_dptext_broadcast_views_cannot_stand_in_for_weights(tmp_path, builds) -> None:
    """Shapes that fit, but each tensor a stride-0 view of one value: 2 GB of model from a 100 KB file."""
    cfg = dataclasses.replace(DPTextConfig.tiny(), **BIG_DPTEXT)
    assert _model_bytes(DPTextDETR, cfg) > 1.5e9
    with torch.device("meta"):
        shell = DPTextDETR(cfg)
    views: dict[int, torch.Tensor] = {}
    state = {PREFIX + k: views.setdefault(id(v), torch.zeros((1,) * v.dim(), dtype=v.dtype).expand(v.shape))
             for k, v in shell.state_dict(keep_vars=True).items()}
    path = tmp_path / "views.pth"
    torch.save({"model": state, "config": dataclasses.asdict(cfg)}, path)
    assert path.stat().st_size < 1e6
    with pytest.raises(TeacherError) as err:
        load_dptext_detr(path)
    _one_line(err, str(path), "too little for the", "shows more values than its data holds")
    assert builds == ["meta"]


def test_dptext_safetensors_shapes_are_compared_before_its_tensors_are_read(dptext_ckpt, tmp_path, builds,
                                                                             monkeypatch) -> None:
    from safetensors.torch import save_file

    state = torch.load(dptext_ckpt, weights_only=True)["model"]
    path = tmp_path / "tiny.safetensors"  # a flat file has no config: the released sizes, which it does not fit
    save_file({k: v.clone().contiguous() for k, v in state.items()}, path)
    reads: list[str] = []
    monkeypatch.setattr(dptext_detr, "read_checkpoint", lambda *a: reads.append(a[0]))
    with pytest.raises(TeacherError) as err:
        load_dptext_detr(path)
    _one_line(err, f"checkpoint {path} does not match the model its sizes describe", "key 'dptext_detr.")
    assert reads == [] and builds == ["meta"]


def test_dptext_untampered_checkpoint_still_loads(dptext_ckpt, builds) -> None:
    model, cfg = load_dptext_detr(dptext_ckpt)
    assert cfg == DPTextConfig.tiny()
    assert builds == ["meta", "cpu"]  # the shape check, then the real model
    saved = torch.load(dptext_ckpt, weights_only=True)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[PREFIX + key]), key
    teacher = create_teacher("dptext-detr", checkpoint=dptext_ckpt, min_size=64, max_size=96)
    assert teacher.cfg == cfg


# ----------------------------------------------------------------------------------------------------- VisionGPT2


@pytest.fixture(scope="module")
def vg2_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return visiongpt2.save_tiny_checkpoint(tmp_path_factory.mktemp("visiongpt2"), seed=0)


def _tampered_vg2(src: str, dst: Path, text: str | None = None, **changes) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(text if text is not None else json.dumps({**config, **changes}))
    return dst


@pytest.mark.parametrize("changes, needle", [
    ({"embed_dim": 200_000}, "config field 'embed_dim' must be an integer in 1..4096, got 200000"),
    ({"vocab_size": 10**9}, "config field 'vocab_size' must be an integer in 1..262144, got 1000000000"),
    ({"depth": 10**6}, "config field 'depth' must be an integer in 1..64"),
    ({"seq_len": 10**7}, "config field 'seq_len' must be an integer in 1..8192"),
    ({"num_heads": True}, "config field 'num_heads' must be an integer in 1..128, got True"),
    ({"embed_dim": 32.0}, "config field 'embed_dim' must be an integer in 1..4096, got 32.0"),
    ({"patch_size": -16}, "config field 'patch_size' must be an integer in 1..64, got -16"),
    ({"image_size": "32"}, "config field 'image_size' must be an integer in 1..2048, got '32'"),
    ({"mlp_ratio": None}, "config field 'mlp_ratio' must be an integer in 1..16, got None"),
    ({"embed_dim": 30, "num_heads": 4}, "config field 'embed_dim' 30 is not divisible by 'num_heads' 4"),
    ({"image_size": 8}, "config field 'image_size' 8 is smaller than 'patch_size' 16"),
    ({"n_embd": 768}, "unknown config field 'n_embd'"),
])
def test_visiongpt2_sizes_out_of_bounds_or_of_the_wrong_type_build_nothing(vg2_dir, tmp_path, builds, changes,
                                                                            needle) -> None:
    folder = _tampered_vg2(vg2_dir, tmp_path / "bad", **changes)
    with pytest.raises(TeacherError) as err:
        create_teacher("visiongpt2", checkpoint=str(folder))
    _one_line(err, "teacher 'visiongpt2'", str(folder / "config.json"), needle)
    assert builds == []


@pytest.mark.parametrize("text, needle", [
    ("[768, 12]", "its config is a list, not a mapping of model sizes"),
    ('{"vocab_size": 320,', "cannot read"),
    ('{"vocab_size": 1' + "0" * 5000 + "}", "cannot read"),  # too long for Python's int parser
    ("{}" + " " * 70_000, "bytes; a config of model sizes has a few hundred"),
])
def test_visiongpt2_config_json_that_is_no_mapping_of_sizes_is_one_line(vg2_dir, tmp_path, builds, text,
                                                                          needle) -> None:
    folder = _tampered_vg2(vg2_dir, tmp_path / "bad", text=text)
    with pytest.raises(TeacherError) as err:
        load_visiongpt2(folder)
    _one_line(err, str(folder / "config.json"), needle)
    assert builds == []


@pytest.mark.parametrize("changes, needle", [
    ({"vocab_size": 400}, "key 'transformer.wte.weight' has shape (320, 32), the model needs (400, 32)"),
    ({"depth": 3}, "missing key 'blocks.2."),
    ({"seq_len": 128}, "key 'transformer.wpe.weight' has shape (64, 32), the model needs (128, 32)"),
    ({"image_size": 64}, "key 'pos_embed' has shape (1, 5, 32), the model needs (1, 17, 32)"),
    (BIG_VISIONGPT2, "missing key 'blocks.2."),
])
def test_visiongpt2_sizes_in_bounds_that_do_not_fit_the_tensors_name_one(vg2_dir, tmp_path, builds, changes,
                                                                          needle) -> None:
    folder = _tampered_vg2(vg2_dir, tmp_path / "wide", **changes)
    with pytest.raises(TeacherError) as err:
        create_teacher("visiongpt2", checkpoint=str(folder))
    weights = folder / "captioner.pt"
    _one_line(err, f"checkpoint {weights} does not match the model its sizes describe", needle)
    assert builds == ["meta"]


def test_visiongpt2_safetensors_shapes_are_compared_before_its_tensors_are_read(vg2_dir, tmp_path, builds,
                                                                                 monkeypatch) -> None:
    from safetensors.torch import save_file

    folder = _tampered_vg2(vg2_dir, tmp_path / "st", vocab_size=400)
    state = torch.load(folder / "captioner.pt", weights_only=True)
    os.remove(folder / "captioner.pt")
    save_file({k: v.clone() for k, v in state.items()}, folder / "captioner.safetensors")
    reads: list[str] = []
    monkeypatch.setattr(visiongpt2, "read_checkpoint", lambda *a: reads.append(a[0]))
    with pytest.raises(TeacherError) as err:
        load_visiongpt2(folder)
    _one_line(err, str(folder / "captioner.safetensors"), "key 'transformer.wte.weight' has shape (320, 32)")
    assert reads == [] and builds == ["meta"]


def test_visiongpt2_broadcast_views_cannot_stand_in_for_weights(vg2_dir, tmp_path, builds) -> None:
    folder = _tampered_vg2(vg2_dir, tmp_path / "views", **BIG_VISIONGPT2)
    cfg = VisionGPT2Config(**json.loads((folder / "config.json").read_text()))
    assert _model_bytes(VisionGPT2, cfg) > 1.5e9
    with torch.device("meta"):
        shell = VisionGPT2(cfg)
    views: dict[int, torch.Tensor] = {}
    state = {k: views.setdefault(id(v), torch.zeros((1,) * v.dim()).expand(v.shape))
             for k, v in shell.state_dict(keep_vars=True).items()}
    torch.save(state, folder / "captioner.pt")
    assert (folder / "captioner.pt").stat().st_size < 1e6
    with pytest.raises(TeacherError) as err:
        load_visiongpt2(folder)
    _one_line(err, str(folder / "captioner.pt"), "too little for the", "'cls_token' shows more values than its data")
    assert builds == ["meta"]


def test_a_meta_tensor_in_a_checkpoint_is_not_weights(vg2_dir, tmp_path, builds) -> None:
    folder = _tampered_vg2(vg2_dir, tmp_path / "meta")
    state = torch.load(folder / "captioner.pt", weights_only=True)
    state["cls_token"] = torch.empty(1, 1, 32, device="meta")  # loads as meta: a size claim with no data
    torch.save(state, folder / "captioner.pt")
    with pytest.raises(TeacherError) as err:
        load_visiongpt2(folder)
    _one_line(err, "key 'cls_token' is a meta tensor, not weights")
    assert builds == []


def test_visiongpt2_untampered_checkpoint_still_loads(vg2_dir, builds) -> None:
    model, cfg, weights = load_visiongpt2(vg2_dir)
    assert builds == ["meta", "cpu"]
    saved = torch.load(weights, weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert create_teacher("visiongpt2", checkpoint=vg2_dir).cfg == cfg


# -------------------------------------------------------------------------------------------------- both teachers


def test_limits_cover_every_size_and_admit_the_released_and_tiny_models() -> None:
    from teachers.loading import sized_config

    for cls, limits, tiny in ((DPTextConfig, DPTEXT_LIMITS, DPTextConfig.tiny()),
                              (VisionGPT2Config, VISIONGPT2_LIMITS, VisionGPT2Config.tiny(vocab_size=320))):
        assert set(limits) == {f.name for f in dataclasses.fields(cls)}
        for cfg in (cls(), tiny):
            fields = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as a file gives them: tuples are lists
            assert sized_config(cls, fields, limits, teacher="t", source="f") == cfg


def test_peak_memory_stays_small_when_a_small_file_asks_for_a_large_model(dptext_ckpt, vg2_dir, tmp_path) -> None:
    """In a fresh process: in-bounds sizes of a 2 GB model with the tiny tensors raise and the peak resident size
    (VmHWM, reset before each load) grows by far less than the model; a 512 MB allocation afterwards shows that the
    meter sees allocations."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak resident size")
    dpt = _tampered_dptext(dptext_ckpt, tmp_path / "big.pth", **BIG_DPTEXT)
    vg2 = _tampered_vg2(vg2_dir, tmp_path / "big", **BIG_VISIONGPT2)
    assert _model_bytes(DPTextDETR, dataclasses.replace(DPTextConfig.tiny(), **BIG_DPTEXT)) > 1.5e9
    assert _model_bytes(VisionGPT2, VisionGPT2Config(**json.loads((vg2 / "config.json").read_text()))) > 1.5e9
    code = f"""
import json, torch
from teachers import TeacherError
from teachers.dptext_detr import load_dptext_detr
from teachers.visiongpt2 import load_visiongpt2


def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def start():  # reset the peak resident size to the current one (Linux clear_refs 5); returns it
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status("VmRSS")


with torch.device("meta"):  # the first meta build imports torch._dynamo: not part of what is measured
    torch.ones(1) * 2
out = {{}}
for name, load, path in (("dptext", load_dptext_detr, {str(dpt)!r}), ("visiongpt2", load_visiongpt2, {str(vg2)!r})):
    before = start()
    try:
        load(path)
        out[name] = ["loaded", status("VmHWM") - before]
    except TeacherError as exc:
        out[name] = [str(exc), status("VmHWM") - before]
before = start()
block = torch.ones(1 << 27)  # 512 MB, written
out["control"] = ["", status("VmHWM") - before]
print(json.dumps(out))
"""
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for name in ("dptext", "visiongpt2"):
        message, grown = out[name]
        assert "does not match the model its sizes describe" in message, message
        assert grown < 200e6, f"{name}: peak resident size grew by {grown / 1e6:.0f} MB ({out})"
    assert out["control"][1] > 500e6, out  # the meter would have seen the model
