"""Frozen configurations of the student: the network sizes (``ModelConfig``) and one training run (``TrainConfig``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from shards.taxonomy import GLOVE_DIM, NUM_CHANNELS, NUM_TOKENS, VOCAB_SIZE


@dataclass(frozen=True)
class ModelConfig:
    """Every size of Y-MAP-Net; the defaults are the paper configuration "1-8-44" (DESIGN 6).

    The input side must be divisible by ``2 ** len(encoder_filters)``; the bridge output is flattened
    (``(image_size / 2**levels)**2 * bridge_filters`` features) to feed the caption branch.
    """

    image_size: int = 256
    encoder_filters: tuple[int, ...] = (44, 60, 90, 135, 202, 303, 455)
    encoder_dropout: float = 0.1  # spatial dropout after each encoder block
    bridge_filters: int = 307
    bridge_dilations: tuple[int, ...] = (1, 2, 4)
    decoder_filters: tuple[int, ...] = (2560, 1280, 640, 320, 160, 80, 44)
    pixelwise_filters: int = 512
    out_channels: int = NUM_CHANNELS
    num_tokens: int = NUM_TOKENS
    token_dim: int = GLOVE_DIM
    token_width: int = 1228  # paper: equal to the flattened bridge (2 * 2 * 307)
    token_layers: int = 7
    token_dropout: float = 0.2  # on the first token, decreasing linearly over the chain
    token_residual: float = 0.3  # share of each token's output added to the next
    multihot_vocab: int = VOCAB_SIZE  # 0 disables the multi-hot head
    multihot_width: int = 2048
    leaky_slope: float = 0.2

    def __post_init__(self) -> None:
        if len(self.encoder_filters) != len(self.decoder_filters):
            raise ValueError("encoder_filters and decoder_filters need the same number of levels")
        if self.image_size % (2 ** len(self.encoder_filters)):
            raise ValueError(f"image_size {self.image_size} is not divisible by 2**{len(self.encoder_filters)}")

    @property
    def bridge_side(self) -> int:
        return self.image_size // 2 ** len(self.encoder_filters)

    @property
    def flat_features(self) -> int:
        return self.bridge_side ** 2 * self.bridge_filters

    @classmethod
    def paper(cls) -> "ModelConfig":
        """The paper configuration (about 315M parameters with the 2048-word multi-hot head)."""
        return cls()

    @classmethod
    def tiny(cls, image_size: int = 64) -> "ModelConfig":
        """A small network of the same shape, for tests and the demo: three levels up to 64 pixels, one more per
        doubling beyond, so that the bridge stays 8x8 or smaller and the caption chains, which read the
        flattened bridge, stay small: about 1.5M parameters from 64 to 256 pixels (with three levels at 256
        pixels the chains alone had 9.3M)."""
        levels = max(3, int(math.log2(image_size)) - 3) if image_size > 0 else 3
        encoder = (8, 12, 16) + (16,) * (levels - 3)
        decoder = (32,) * (levels - 3) + (32, 16, 12)
        return cls(image_size=image_size, encoder_filters=encoder, encoder_dropout=0.0, bridge_filters=16,
                   decoder_filters=decoder, pixelwise_filters=16, token_width=64, token_layers=2,
                   token_dropout=0.0, multihot_vocab=0, multihot_width=64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Rebuild from ``to_dict`` output (lists become tuples again; unknown keys are an error)."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class LossGains:
    """Weight of each part of the loss (DESIGN 6); ``multihot`` weighs the optional head's BCE."""

    tokens: float = 10.0
    joints: float = 2.4
    pafs: float = 1.0
    depth: float = 1.0
    normals: float = 1.0
    text: float = 1.0
    groups: float = 2.0
    multihot: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """One training run (DESIGN 6); CLI flags of ``student train`` override these defaults."""

    shards: str = "shards"
    train_split: str = "train2017"
    val_split: str = "val2017"
    out: str = "runs/student"
    model: str = "paper"  # paper | tiny
    epochs: int = 250
    steps_per_epoch: int = 0  # 0 = one pass over the train split (rounded down to whole batches)
    val_steps: int = 0  # 0 = the whole val split
    batch_size: int = 32
    lr: float = 2.4e-4
    lr_final: float = 1.0e-4
    lr_decay_epochs: int = 100  # linear decay from lr to lr_final over these epochs, then flat
    patience: int = 65  # early stopping on the validation loss, in epochs
    workers: int = 4
    seed: int = 0
    augment: bool = True
    amp: str = "none"  # none | bf16
    device: str = "auto"
    shuffle_buffer: int = 256
    # target sizes (DESIGN 5.5), in pixels of a 256-pixel store; scaled to the store size
    heatmap_radius: tuple[int, int] = (23, 8)  # start, final
    paf_width: tuple[int, int] = (6, 2)
    size_step_epochs: int = 20  # one pixel smaller every this many epochs
    # loss gains (DESIGN 6), flat so that each is a flag and a key of saved configs
    gain_tokens: float = LossGains.tokens
    gain_joints: float = LossGains.joints
    gain_pafs: float = LossGains.pafs
    gain_depth: float = LossGains.depth
    gain_normals: float = LossGains.normals
    gain_text: float = LossGains.text
    gain_groups: float = LossGains.groups
    gain_multihot: float = LossGains.multihot
    tensorboard: bool = True
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def loss_gains(self) -> LossGains:
        """The ``gain_*`` fields as the loss takes them."""
        return LossGains(**{f.name: getattr(self, f"gain_{f.name}") for f in fields(LossGains)})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})
