"""The Y-MAP-Net module (DESIGN 6 sizes), its checkpoints, and that the tiny model can learn 8 samples."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from shards.synthetic import write_synthetic_store
from student.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from student.config import ModelConfig
from student.data import open_split, to_device
from student.loss import compute_loss
from student.model import YMapNet


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine is shared: no oversubscription
    yield
    torch.set_num_threads(before)


def test_paper_configuration_matches_the_design_size_check() -> None:
    with torch.device("meta"):
        counts = YMapNet(ModelConfig.paper()).parameter_counts()
        big_head = YMapNet(replace(ModelConfig.paper(), multihot_vocab=17977)).parameter_counts()
    m = {k: v / 1e6 for k, v in counts.items()}
    assert m["encoder"] == pytest.approx(5.8, abs=0.05)
    assert m["bridge"] == pytest.approx(3.0, abs=0.05)
    assert m["decoder"] == pytest.approx(204.1, abs=0.05)
    assert m["head"] == pytest.approx(0.05, abs=0.005)
    assert m["tokens"] == pytest.approx(88.3, abs=0.05)
    assert m["total"] == pytest.approx(301.3, abs=0.05) and m["multihot"] == 0  # the paper recipe has no head
    with torch.device("meta"):
        head_2048 = YMapNet(replace(ModelConfig.paper(), multihot_vocab=2048)).parameter_counts()
    assert head_2048["total"] / 1e6 == pytest.approx(314.6, abs=0.05)
    assert big_head["total"] / 1e6 == pytest.approx(347, abs=1.0)
    assert ModelConfig.paper().flat_features == 2 * 2 * 307


def test_tiny_forward_shapes_ranges_and_multihot(one_thread) -> None:
    torch.manual_seed(0)
    cfg = replace(ModelConfig.tiny(32), multihot_vocab=50)
    model = YMapNet(cfg).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    out = model(images)
    assert out["maps"].shape == (3, 44, 32, 32) and out["tokens"].shape == (3, 8, 300)
    assert out["multihot"].shape == (3, 50)
    assert out["maps"].abs().max() <= 1 and out["tokens"].abs().max() <= 1
    assert 0 <= out["multihot"].min() and out["multihot"].max() <= 1
    assert torch.allclose(model(images.float() / 255)["maps"], out["maps"], atol=1e-6)  # uint8 rescaled inside
    assert "multihot" not in YMapNet(ModelConfig.tiny(32))(images[:1])


def test_layers_follow_the_authors_code() -> None:
    cfg = ModelConfig.paper()
    assert (cfg.bn_eps, cfg.bn_momentum, cfg.ln_eps) == (1e-3, 0.01, 1e-3)  # Keras defaults (momentum 0.99)
    with torch.device("meta"):
        model = YMapNet(cfg)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    lns = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)
    assert lns and all(m.eps == 1e-3 for m in lns)
    # each token layer: dense -> LeakyReLU -> LayerNorm -> dropout of 20% / (token + 1)
    for i, chain in enumerate(model.tokens):
        kinds = [type(m).__name__ for m in chain.body]
        assert kinds == ["Linear", "LeakyReLU", "LayerNorm", "Dropout"] * 7 + ["Linear", "LeakyReLU", "LayerNorm"]
        assert [m.p for m in chain.body if isinstance(m, torch.nn.Dropout)] == pytest.approx([0.2 / (i + 1)] * 7)
    # spatial dropout inside each encoder block, none in the decoder; bridge: conv -> LeakyReLU -> BatchNorm
    assert all(isinstance(b.drop, torch.nn.Dropout2d) and b.drop.p == 0.2 for b in model.encoder)
    assert all(isinstance(level.block.drop, torch.nn.Identity) for level in model.decoder)
    assert [type(m).__name__ for m in model.bridge][:3] == ["Conv2d", "LeakyReLU", "BatchNorm2d"]


def test_token_residual_enters_before_the_last_dense_layer(one_thread) -> None:
    torch.manual_seed(0)
    model = YMapNet(ModelConfig.tiny(32)).eval()
    flat = torch.randn(2, model.cfg.flat_features)
    previous = torch.rand(2, 300) * 2 - 1
    chain = model.tokens[1]
    expected = torch.tanh(chain.out(chain.body(flat) + 0.3 * previous))
    assert torch.allclose(chain(flat, previous, 0.3), expected)
    assert not torch.allclose(chain(flat, previous, 0.3), torch.tanh(chain.out(chain.body(flat)) + 0.3 * previous))


def test_encoder_dropout_drops_the_block_body_not_the_sum(one_thread) -> None:
    torch.manual_seed(0)
    cfg = replace(ModelConfig.tiny(32), encoder_dropout=0.9)
    block = YMapNet(cfg).encoder[1].train()
    x = torch.randn(4, block.body[0].in_channels, 8, 8)
    out = block(x)
    shortcut = block.shortcut(x)
    dropped = (out - shortcut).abs().amax(dim=(2, 3)) == 0  # (4, C): channels whose body was dropped
    assert dropped.float().mean() > 0.5  # about 90% of them
    assert (out.abs().amax(dim=(2, 3)) > 0).all()  # the residual path is never dropped


def test_multihot_head_trains_on_detached_tokens(one_thread) -> None:
    torch.manual_seed(0)
    model = YMapNet(replace(ModelConfig.tiny(32), multihot_vocab=20))
    out = model(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    torch.nn.functional.binary_cross_entropy(out["multihot"], torch.zeros(2, 20)).backward()
    assert all(p.grad is None for p in model.tokens.parameters())
    assert all(p.grad is not None for p in model.multihot.parameters())


def test_glorot_initialisation() -> None:
    torch.manual_seed(0)
    model = YMapNet(ModelConfig.tiny(32))
    linear = model.tokens[0].body[0]
    fan_in, fan_out = linear.in_features, linear.out_features
    assert linear.weight.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.05)
    assert not linear.bias.any()


def test_config_validation_and_round_trip() -> None:
    cfg = ModelConfig.tiny(64)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig.tiny(60)
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("arch", "bn_eps", "bn_momentum", "ln_eps")}
    with pytest.raises(ValueError, match="older layout"):  # a checkpoint of the layout before this one
        ModelConfig.from_dict(old)


def test_checkpoint_round_trip_and_errors(tmp_path, one_thread) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(32)
    model = YMapNet(cfg)
    model(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))  # move BatchNorm statistics
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, cfg, epoch=3, metrics={"loss": 0.5})
    loaded, loaded_cfg, extra = load_checkpoint(path)
    assert loaded_cfg == cfg and extra == {"epoch": 3, "metrics": {"loss": 0.5}}
    model.eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(model(images)["maps"], loaded(images)["maps"])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a student checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_tiny_model_overfits_eight_samples(tmp_path, one_thread) -> None:
    write_synthetic_store(tmp_path, "train2017", 8, 8, size=64, seed=3)
    host = next(iter(open_split(tmp_path, "train2017", train=False, batch_size=8)))
    assert len(host["key"]) == 8
    batch = to_device(host, torch.device("cpu"))
    torch.manual_seed(0)
    model = YMapNet(ModelConfig.tiny(64))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        out = model(batch["images"])
        loss, _ = compute_loss(out, batch["targets"], batch["pose_mask"], batch["glove"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if losses[-1] * 10 <= losses[0]:
            break
    assert np.isfinite(losses).all()
    assert losses[-1] * 10 <= losses[0], f"loss went from {losses[0]:.3f} to {losses[-1]:.3f} in {len(losses)} steps"
