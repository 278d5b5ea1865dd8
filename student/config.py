"""Frozen configurations of the student: the network sizes (``ModelConfig``) and one training run (``TrainConfig``,
whose ``recipe`` says how it learns)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from shards.taxonomy import GLOVE_DIM, NUM_CHANNELS, NUM_TOKENS
from student.recipe import Recipe


#: the largest value of each size of the network (about 100x the paper's): a config is data, read from checkpoints
_LIMITS = {"image_size": 8192, "encoder_filters": 65536, "bridge_filters": 65536, "bridge_dilations": 64,
           "decoder_filters": 65536, "pixelwise_filters": 65536, "out_channels": 4096, "num_tokens": 64,
           "token_dim": 4096, "token_width": 65536, "token_layers": 64, "multihot_vocab": 1 << 20,
           "multihot_width": 65536}


@dataclass(frozen=True)
class ModelConfig:
    """Every size of Y-MAP-Net; the defaults are the paper configuration "1-8-44" (DESIGN 6).

    The input side must be divisible by ``2 ** len(encoder_filters)``; the bridge output is flattened
    (``(image_size / 2**levels)**2 * bridge_filters`` features) to feed the caption branch.
    """

    arch: int = 2  # layer layout of the network; 1 = before the paper-recipe layout (its checkpoints do not load)
    image_size: int = 256
    encoder_filters: tuple[int, ...] = (44, 60, 90, 135, 202, 303, 455)
    encoder_dropout: float = 0.2  # spatial dropout on each encoder block's body, before the residual add
    bridge_filters: int = 307
    bridge_dilations: tuple[int, ...] = (1, 2, 4)
    decoder_filters: tuple[int, ...] = (2560, 1280, 640, 320, 160, 80, 44)
    pixelwise_filters: int = 512
    out_channels: int = NUM_CHANNELS
    num_tokens: int = NUM_TOKENS
    token_dim: int = GLOVE_DIM
    token_width: int = 1228  # paper: equal to the flattened bridge (2 * 2 * 307)
    token_layers: int = 7
    token_dropout: float = 0.2  # after each layer of token i: token_dropout / (i + 1)
    token_residual: float = 0.3  # share of each token's output added to the next, before its last dense layer
    multihot_vocab: int = 0  # multi-hot head over this many words; 0 = none (the paper recipe has none)
    multihot_width: int = 2048
    leaky_slope: float = 0.2
    bn_eps: float = 1e-3  # Keras BatchNormalization defaults (the authors' layers set none) ...
    bn_momentum: float = 0.01  # ... Keras momentum 0.99 is PyTorch momentum 1 - 0.99
    ln_eps: float = 1e-3  # Keras LayerNormalization default

    def __post_init__(self) -> None:
        if self.arch != ModelConfig.arch:
            raise ValueError(f"architecture {self.arch} is an older layout of the network than this version's "
                             f"({ModelConfig.arch}); train a new model")
        for name, most in _LIMITS.items():  # a config read from a file must not ask for unbounded memory
            values = getattr(self, name)
            for v in values if isinstance(values, tuple) else (values,):
                if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= most:
                    raise ValueError(f"{name} {values!r} is not an integer in 0..{most}")
        if len(self.encoder_filters) > 16 or len(self.bridge_dilations) > 16:
            raise ValueError("at most 16 encoder levels and 16 bridge layers")
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
        """The paper configuration (301.3M parameters; 314.6M with a 2048-word multi-hot head)."""
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
        return cls(image_size=image_size, encoder_filters=encoder, bridge_filters=16,
                   decoder_filters=decoder, pixelwise_filters=16, token_width=64, token_layers=2, multihot_width=64)

    @classmethod
    def small(cls, image_size: int = 128) -> "ModelConfig":
        """A network that learns in minutes on a CPU (``bench/learn.py``): four levels up to 128 pixels (one more
        per doubling beyond), wider than ``tiny`` where the maps are made (about 4M parameters at 128 pixels)."""
        levels = max(4, int(math.log2(image_size)) - 3) if image_size > 0 else 4
        encoder = (16, 32, 64, 96) + (96,) * (levels - 4)
        decoder = (128,) * (levels - 4) + (128, 64, 48, 32)
        # its runs last hundreds of steps, not the paper's hundreds of thousands: BatchNorm's running statistics
        # must follow within them (Keras's momentum keeps 37% of the initial statistics after 100 steps)
        return cls(image_size=image_size, encoder_filters=encoder, bridge_filters=32, decoder_filters=decoder,
                   pixelwise_filters=128, token_width=128, token_layers=2, multihot_width=256, bn_momentum=0.1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Rebuild from ``to_dict`` output (lists become tuples again; unknown keys are an error)."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**{"arch": 1, **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}})


MODELS = ("paper", "small", "tiny")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: where it reads and writes, how it runs, and its ``recipe`` (what it learns).

    CLI flags of ``student train`` override these defaults and the recipe's fields (``--recipe`` gives the base).
    """

    shards: str = "shards"
    train_split: str = "train2017"
    val_split: str = "val2017"
    out: str = "runs/student"
    model: str = "paper"  # paper | small | tiny
    recipe: Recipe = field(default_factory=Recipe)
    steps_per_epoch: int = 0  # 0 = one pass over the train split (padded to whole batches); N = N resampled draws
    val_steps: int = 0  # 0 = the whole val split
    max_steps: int = 0  # end the run normally after this many steps in all (0 = no limit)
    max_minutes: float = 0.0  # end the run normally after the step that passes this much training time (0 = none)
    workers: int = 4
    seed: int = 0
    amp: str = "none"  # none | bf16
    # Speed options (project choices, off by default; results equal to float tolerance, tests/test_student_gpu.py):
    channels_last: bool = False  # NHWC weights and activations, the layout cuDNN's tensor-core convolutions use
    compile: bool = False  # torch.compile the training step's network (the first steps pay the compilation)
    prefetch: bool = True  # CUDA: the next batch's copy runs on a side stream during the current step
    device: str = "auto"
    shuffle_buffer: int = 256
    tensorboard: bool = True
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "recipe"},
                "recipe": self.recipe.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Rebuild from ``to_dict`` output; a saved config of a version without recipes (its recipe fields
        flat among the others) gives those fields over the paper recipe."""
        names = {f.name for f in fields(cls)} - {"recipe"}
        recipe_names = {f.name for f in fields(Recipe)}
        recipe = Recipe.from_dict(d.get("recipe") or {k: v for k, v in d.items() if k in recipe_names - names})
        return cls(recipe=recipe, **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})
