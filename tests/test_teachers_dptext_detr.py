"""DPText-DETR port: deformable attention against a per-point loop, official parameter names and shapes,
strict checkpoint loading with one-line errors, and the teacher on real photos with tiny random weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data

from teachers import TeacherError, TeacherInput, create_teacher
from teachers.deformable_attention import MSDeformAttn, ms_deform_attn
from teachers.dptext_detr import PREFIX, load_dptext_detr, save_tiny_checkpoint
from teachers.dptext_detr_model import DPTextConfig, DPTextDETR
from teachers.tiny import save_tiny_checkpoint as save_tiny_by_name


def _bilinear_reference(value, shapes, locations, weights):
    """Direct per-point loop: bilinear sample (align_corners=False, zeros outside) times weight, summed."""
    n, _, m, d = value.shape
    _, q, _, levels, points, _ = locations.shape
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    out = torch.zeros(n, q, m, d, dtype=value.dtype)
    for b in range(n):
        for i in range(q):
            for h_ in range(m):
                for lvl, (hh, ww) in enumerate(shapes):
                    fmap = value[b, starts[lvl]:starts[lvl + 1], h_].view(hh, ww, d)
                    for p in range(points):
                        x = locations[b, i, h_, lvl, p, 0].item() * ww - 0.5
                        y = locations[b, i, h_, lvl, p, 1].item() * hh - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(d, dtype=value.dtype)
                        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yy < hh and 0 <= xx < ww:
                                sample += (1 - abs(x - xx)) * (1 - abs(y - yy)) * fmap[yy, xx]
                        out[b, i, h_] += weights[b, i, h_, lvl, p] * sample
    return out.view(n, q, m * d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_deformable_attention_matches_per_point_loop(dtype) -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 7), (3, 4), (2, 2), (1, 1)]
    n, q, m, d, points = 2, 6, 2, 4, 3
    value = torch.randn(n, sum(h * w for h, w in shapes), m, d, generator=g, dtype=dtype)
    # some points fall outside the map, where the sample must fade to zero
    locations = torch.rand(n, q, m, len(shapes), points, 2, generator=g, dtype=dtype) * 1.3 - 0.15
    weights = torch.rand(n, q, m, len(shapes) * points, generator=g, dtype=dtype).softmax(-1)
    weights = weights.view(n, q, m, len(shapes), points)
    got = ms_deform_attn(value, shapes, locations, weights)
    want = _bilinear_reference(value, shapes, locations, weights)
    assert got.shape == (n, q, m * d)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert got.abs().max() > 0.1  # not trivially zero


def test_deformable_attention_module_ignores_padding_and_uses_pixel_offsets() -> None:
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2).double().eval()
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    shapes = [(4, 4), (2, 2)]
    src = torch.randn(1, 20, 16, dtype=torch.float64)
    query = torch.randn(1, 3, 16, dtype=torch.float64)
    ref = torch.rand(1, 3, 2, 2, dtype=torch.float64)
    ref[..., 1] = 0.875  # the centre of level 0's last row, so the padded row is sampled
    pad = torch.zeros(1, 20, dtype=torch.bool)
    pad[0, 12:16] = True  # the last row of level 0
    out = attn(query, ref, src, shapes, pad)
    changed = src.clone()
    changed[0, 12:16] += 100.0
    assert torch.allclose(attn(query, ref, changed, shapes, pad), out)
    assert not torch.allclose(attn(query, ref, changed, shapes, None), out)
    # with zero offset weights the samples sit at reference + bias / (W, H) of each level
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
    value = attn.value_proj(src).view(1, 20, 2, 8)
    offsets = attn.sampling_offsets.bias.view(2, 2, 2, 2).double()  # (heads, levels, points, xy)
    norm = torch.tensor([[4.0, 4.0], [2.0, 2.0]], dtype=torch.float64)
    loc = ref[:, :, None, :, None, :] + offsets[None, None] / norm[None, None, None, :, None, :]
    w = attn.attention_weights(query).view(1, 3, 2, 4).softmax(-1).view(1, 3, 2, 2, 2)
    want = attn.output_proj(_bilinear_reference(value, shapes, loc, w))
    assert torch.allclose(attn(query, ref, src, shapes), want, atol=1e-10)


def _official_transformer_keys(cfg: DPTextConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of everything but the backbone, written out from the official model code."""
    d, ff, lv = cfg.d_model, cfg.dim_feedforward, cfg.num_feature_levels
    keys: dict[str, tuple[int, ...]] = {}

    def linear(name, din, dout):
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (dout, din), (dout,)

    def norm(name):
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (d,), (d,)

    def mlp(name, dims):
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            linear(f"{name}.layers.{i}", a, b)

    def msda(name, pts):
        linear(f"{name}.sampling_offsets", d, cfg.n_heads * lv * pts * 2)
        linear(f"{name}.attention_weights", d, cfg.n_heads * lv * pts)
        linear(f"{name}.value_proj", d, d)
        linear(f"{name}.output_proj", d, d)

    def mha(name):
        keys[f"{name}.in_proj_weight"], keys[f"{name}.in_proj_bias"] = (3 * d, d), (3 * d,)
        linear(f"{name}.out_proj", d, d)

    for i, c in enumerate([cfg.res2_channels * 2, cfg.res2_channels * 4, cfg.res2_channels * 8]):
        keys[f"input_proj.{i}.0.weight"], keys[f"input_proj.{i}.0.bias"] = (d, c, 1, 1), (d,)
        norm(f"input_proj.{i}.1")
    keys["input_proj.3.0.weight"], keys["input_proj.3.0.bias"] = (d, cfg.res2_channels * 8, 3, 3), (d,)
    norm("input_proj.3.1")
    keys["ctrl_point_embed.weight"] = (cfg.num_ctrl_points, d)
    for k in range(cfg.dec_layers):
        linear(f"ctrl_point_class.{k}", d, 1)
        mlp(f"ctrl_point_coord.{k}", [d, d, d, 2])
        mlp(f"transformer.decoder.ctrl_point_coord.{k}", [d, d, d, 2])
    for cls_name, coord_name in (("bbox_class", "bbox_coord"),
                                 ("transformer.bbox_class_embed", "transformer.bbox_embed")):
        linear(cls_name, d, 1)
        mlp(coord_name, [d, d, d, 4])
    keys["transformer.level_embed"] = (lv, d)
    linear("transformer.enc_output", d, d)
    norm("transformer.enc_output_norm")
    for n in range(cfg.enc_layers):
        e = f"transformer.encoder.layers.{n}"
        msda(f"{e}.self_attn", cfg.enc_n_points)
        norm(f"{e}.norm1"), linear(f"{e}.linear1", d, ff), linear(f"{e}.linear2", ff, d), norm(f"{e}.norm2")
    mlp("transformer.decoder.ref_point_head", [d, d, d])
    for n in range(cfg.dec_layers):
        e = f"transformer.decoder.layers.{n}"
        msda(f"{e}.attn_cross", cfg.dec_n_points)
        mha(f"{e}.attn_intra"), mha(f"{e}.attn_inter")
        keys[f"{e}.circonv.conv.weight"], keys[f"{e}.circonv.conv.bias"] = (d, d, 9), (d,)
        for s in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{e}.circonv.norm.{s}"] = (d,)
        keys[f"{e}.circonv.norm.num_batches_tracked"] = ()
        for nm in ("norm_cross", "norm_intra", "norm_fuse", "norm_inter", "norm3"):
            norm(f"{e}.{nm}")
        linear(f"{e}.mlp_fuse", d, d), linear(f"{e}.linear1", d, ff), linear(f"{e}.linear2", ff, d)
    return keys


def test_full_size_model_has_the_official_names_and_shapes() -> None:
    cfg = DPTextConfig()
    with torch.device("meta"):
        model = DPTextDETR(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    backbone = {k: v for k, v in got.items() if k.startswith("backbone.0.backbone.")}
    rest = {k: v for k, v in got.items() if k not in backbone}
    assert rest == _official_transformer_keys(cfg)
    # ResNet-50: 53 conv + norm pairs (4 buffers each) = 265 entries
    assert len(backbone) == 265
    assert backbone["backbone.0.backbone.stem.conv1.weight"] == (64, 3, 7, 7)
    assert backbone["backbone.0.backbone.res5.2.conv3.weight"] == (2048, 512, 1, 1)
    assert backbone["backbone.0.backbone.res4.5.conv2.norm.running_var"] == (256,)
    assert "backbone.0.backbone.res3.0.shortcut.norm.weight" in backbone


def test_backbone_matches_detectron2_resnet50() -> None:
    pytest.importorskip("detectron2.modeling")
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_resnet_backbone

    from teachers.dptext_detr_backbone import ResNet

    d2cfg = get_cfg()
    d2cfg.MODEL.RESNETS.DEPTH = 50
    d2cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    d2cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    torch.manual_seed(0)
    ref = build_resnet_backbone(d2cfg, ShapeSpec(channels=3)).eval()
    for name, buf in ref.named_buffers():
        if name.endswith("running_var"):
            buf.uniform_(0.5, 1.5)
        elif name.endswith(("running_mean", "bias")):
            buf.normal_(0, 0.1)
    ours = ResNet().eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        want = ref(x)
        got = ours(x)
    for name, feat in zip(("res3", "res4", "res5"), got):
        assert feat.shape == want[name].shape
        assert torch.allclose(feat, want[name], rtol=1e-4, atol=1e-4 * want[name].abs().max().item())


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> str:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("dptext"), seed=0)


def test_tiny_checkpoint_round_trips_strictly(tiny_ckpt, tmp_path) -> None:
    model, cfg = load_dptext_detr(tiny_ckpt)
    saved = torch.load(tiny_ckpt, weights_only=True)
    assert cfg == DPTextConfig.tiny()
    assert set(saved["model"]) == {PREFIX + k for k in model.state_dict()}
    assert set(_official_transformer_keys(cfg)) <= {k[len(PREFIX):] for k in saved["model"]}
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved["model"][PREFIX + k]), k
    # the shared heads really are one module: every alias holds the same tensor
    assert model.ctrl_point_coord[0] is model.transformer.decoder.ctrl_point_coord[1]
    # the same seed writes the same weights
    again = torch.load(save_tiny_by_name("dptext-detr", tmp_path / "again", seed=0), weights_only=True)
    assert all(torch.equal(v, again["model"][k]) for k, v in saved["model"].items())


@pytest.mark.parametrize("change, needle", [
    ("missing", "missing key 'dptext_detr.transformer.decoder.layers.1.circonv.norm.running_var'"),
    ("extra", "unexpected key 'dptext_detr.extra_head.weight'"),
    ("unprefixed", "unexpected key 'ctrl_point_embed.weight'"),
    ("shape", "key 'dptext_detr.ctrl_point_embed.weight' has shape (16, 32)"),
])
def test_checkpoint_mismatch_is_one_clear_error(tiny_ckpt, tmp_path, change, needle) -> None:
    obj = torch.load(tiny_ckpt, weights_only=True)
    sd = obj["model"]
    if change == "missing":
        del sd["dptext_detr.transformer.decoder.layers.1.circonv.norm.running_var"]
    elif change == "extra":
        sd["dptext_detr.extra_head.weight"] = torch.zeros(2)
    elif change == "unprefixed":
        sd["ctrl_point_embed.weight"] = sd["dptext_detr.ctrl_point_embed.weight"]
    else:
        sd["dptext_detr.ctrl_point_embed.weight"] = torch.zeros(16, 32)
    path = tmp_path / "bad.pth"
    torch.save(obj, path)
    with pytest.raises(TeacherError) as err:
        create_teacher("dptext-detr", checkpoint=str(path))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unreadable_or_absent_checkpoint_is_one_clear_error(tmp_path) -> None:
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a checkpoint")
    for path, needle in ((bad, "cannot read checkpoint"), (tmp_path / "none.pth", "does not exist")):
        with pytest.raises(TeacherError) as err:
            create_teacher("dptext-detr", checkpoint=str(path))
        assert needle in str(err.value) and "\n" not in str(err.value)


def test_teacher_on_real_photos_returns_polygons_in_original_pixels(tiny_ckpt) -> None:
    images = [data.astronaut()[::2, ::2].copy(), data.coffee(), data.chelsea()[::2, ::2].copy()]
    teacher = create_teacher("dptext-detr", checkpoint=tiny_ckpt, min_size=96, max_size=160, threshold=0.0,
                             batch_size=2)
    assert teacher.spec.task == "text"
    out = teacher([TeacherInput(im, image_id=i) for i, im in enumerate(images)])
    assert len(out) == 3
    cfg = DPTextConfig.tiny()
    for pred, img in zip(out, images):
        assert set(pred) == {"polygons", "scores"}
        assert len(pred["polygons"]) == len(pred["scores"]) == cfg.num_queries
        for poly, score in zip(pred["polygons"], pred["scores"]):
            assert poly.dtype == np.float32 and poly.shape == (16, 2)
            assert 0.0 <= poly[:, 0].min() and poly[:, 0].max() <= img.shape[1]
            assert 0.0 <= poly[:, 1].min() and poly[:, 1].max() <= img.shape[0]
            assert isinstance(score, float) and 0.0 <= score <= 1.0
    # polygons are the model's normalised points times the original size, scores the mean-logit sigmoid
    resized = teacher._resize(images[1])
    with torch.no_grad():
        logits, points = teacher.model(teacher._tensor([resized]), torch.zeros(1, *resized.shape[:2], dtype=bool))
    h, w = images[1].shape[:2]
    single = teacher([TeacherInput(images[1])])[0]
    assert resized.shape[:2] == (96, 144)  # 400x600 -> shorter side 96
    # an image's result does not depend on its batch: same-size images share a call, without padding
    flipped = images[1][:, ::-1].copy()
    pair = teacher([TeacherInput(images[1]), TeacherInput(flipped)])
    for got, want in zip(pair, (single, teacher([TeacherInput(flipped)])[0])):
        np.testing.assert_allclose(np.stack(got["polygons"]), np.stack(want["polygons"]), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.stack(out[1]["polygons"]), np.stack(single["polygons"]), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.stack(single["polygons"]), points[0].numpy() * [w, h], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(single["scores"], logits[0].mean(-1).sigmoid().numpy(), rtol=1e-5)
    # the threshold keeps exactly the queries scoring at least it
    cut = float(np.median(single["scores"]))
    strict = create_teacher("dptext-detr", checkpoint=tiny_ckpt, min_size=96, max_size=160, threshold=cut)
    kept = strict([TeacherInput(images[1])])[0]
    assert kept["scores"] == [s for s in single["scores"] if s >= cut]
    assert teacher.fingerprint() != strict.fingerprint()


def test_bad_parameters_are_clear_errors(tiny_ckpt) -> None:
    with pytest.raises(TeacherError, match="threshold"):
        create_teacher("dptext-detr", checkpoint=tiny_ckpt, threshold=1.5)
    with pytest.raises(TeacherError, match="uint8"):
        create_teacher("dptext-detr", checkpoint=tiny_ckpt, min_size=64)([TeacherInput(np.zeros((8, 8)))])


def test_deformable_attention_samples_in_float32_under_autocast(monkeypatch) -> None:
    import teachers.deformable_attention as da

    seen = []

    def spy(value, shapes, locations, weights):
        seen.append((value.dtype, locations.dtype, weights.dtype))
        return ms_deform_attn(value, shapes, locations, weights)

    monkeypatch.setattr(da, "ms_deform_attn", spy)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2).eval()
    shapes = [(6, 8), (3, 4)]
    query, values = torch.randn(1, 5, 16), torch.randn(1, 6 * 8 + 3 * 4, 16)
    ref = torch.rand(1, 5, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(query, ref, values, shapes)
    assert seen == [(torch.float32,) * 3] and out.dtype == torch.bfloat16  # the projections stay in bfloat16
    torch.testing.assert_close(out.float(), attn(query, ref, values, shapes), atol=0.05, rtol=0.05)


def test_deformable_attention_equals_transformers_pure_pytorch_core() -> None:
    from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

    g = torch.Generator().manual_seed(3)
    shapes = [(6, 9), (3, 5), (2, 3), (1, 2)]
    value = torch.randn(2, sum(h * w for h, w in shapes), 4, 8, generator=g)
    loc = torch.rand(2, 10, 4, 4, 2, 2, generator=g)
    w = torch.rand(2, 10, 4, 4, 2, generator=g)
    shape_t = torch.tensor(shapes)
    start = torch.cat([shape_t.new_zeros(1), shape_t.prod(1).cumsum(0)[:-1]])
    want = MultiScaleDeformableAttention()(value, shape_t, shapes, start, loc, w, 64)
    assert torch.allclose(ms_deform_attn(value, shapes, loc, w), want, atol=1e-6)
