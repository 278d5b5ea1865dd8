"""The Y-MAP-Net network (DESIGN 6): U-Net-like encoder / bridge / decoder for 44 maps, plus 8 caption tokens."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from student.config import ModelConfig


class ResBlock(nn.Module):
    """2x [3x3 conv -> BatchNorm -> LeakyReLU] plus a (1x1-projected when needed) shortcut."""

    def __init__(self, cin: int, cout: int, slope: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(slope),
            nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(slope),
        )
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class UpLevel(nn.Module):
    """2x2 transposed conv, concat with the encoder skip, residual block, added to the upsampled input."""

    def __init__(self, cin: int, cskip: int, cout: int, slope: float) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.block = ResBlock(cout + cskip, cout, slope)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)  # (B, cout, 2h, 2w)
        return up + self.block(torch.cat([up, skip], dim=1))


class TokenChain(nn.Module):
    """One caption token: ``layers`` dense layers with LayerNorm, dropout, then two 300-d layers."""

    def __init__(self, cin: int, cfg: ModelConfig, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(cfg.token_layers):
            layers += [nn.Linear(cin if i == 0 else cfg.token_width, cfg.token_width),
                       nn.LayerNorm(cfg.token_width), nn.LeakyReLU(cfg.leaky_slope)]
        self.body = nn.Sequential(*layers, nn.Dropout(dropout),
                                  nn.Linear(cfg.token_width, cfg.token_dim), nn.LeakyReLU(cfg.leaky_slope))
        self.out = nn.Linear(cfg.token_dim, cfg.token_dim)

    def forward(self, flat: torch.Tensor, previous: torch.Tensor | None, residual: float) -> torch.Tensor:
        z = self.out(self.body(flat))  # (B, 300)
        if previous is not None:
            z = z + residual * previous
        return torch.tanh(z)


class YMapNet(nn.Module):
    """Y-MAP-Net: uint8 images in, 44 tanh maps and 8 tanh GloVe tokens out (+ multi-hot words when enabled).

    Args:
        cfg: the sizes; ``ModelConfig.paper()`` by default.
    """

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ModelConfig.paper()
        self.cfg = cfg
        s = cfg.leaky_slope
        enc, cin = [], 3
        for c in cfg.encoder_filters:
            enc.append(ResBlock(cin, c, s))
            cin = c
        self.encoder = nn.ModuleList(enc)
        self.drop = nn.Dropout2d(cfg.encoder_dropout)
        bridge = []
        for d in cfg.bridge_dilations:
            bridge += [nn.Conv2d(cin, cfg.bridge_filters, 3, padding=d, dilation=d),
                       nn.BatchNorm2d(cfg.bridge_filters), nn.LeakyReLU(s)]
            cin = cfg.bridge_filters
        self.bridge = nn.Sequential(*bridge)
        dec = []
        for cout, cskip in zip(cfg.decoder_filters, reversed(cfg.encoder_filters)):
            dec.append(UpLevel(cin, cskip, cout, s))
            cin = cout
        self.decoder = nn.ModuleList(dec)
        self.head = nn.Sequential(nn.Conv2d(cin, cfg.pixelwise_filters, 1), nn.LeakyReLU(s),
                                  nn.Conv2d(cfg.pixelwise_filters, cfg.out_channels, 1))
        self.tokens = nn.ModuleList(
            TokenChain(cfg.flat_features, cfg, cfg.token_dropout * (1 - i / cfg.num_tokens))
            for i in range(cfg.num_tokens))
        self.multihot = None
        if cfg.multihot_vocab:
            w = cfg.multihot_width
            self.multihot = nn.Sequential(
                nn.Linear(cfg.num_tokens * cfg.token_dim, w), nn.LeakyReLU(s),
                nn.Linear(w, w), nn.LeakyReLU(s), nn.Linear(w, cfg.multihot_vocab))
        self.apply(_glorot)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the network.

        Args:
            images: (B, 3, H, W) uint8 RGB (or float already in [0, 1]), H = W = ``cfg.image_size``.

        Returns:
            ``{"maps": (B, 44, H, W), "tokens": (B, 8, 300)}`` in [-1, 1], plus ``"multihot"``
            (B, V) probabilities when the head is enabled.
        """
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        skips = []
        for block in self.encoder:
            x = self.drop(block(x))
            skips.append(x)  # (B, c_i, H / 2**i, W / 2**i)
            x = F.avg_pool2d(x, 2)
        x = self.bridge(x)  # (B, 307, 2, 2) in the paper configuration
        flat = x.flatten(1)  # (B, 1228)
        for level, skip in zip(self.decoder, reversed(skips)):
            x = level(x, skip)
        out = {"maps": torch.tanh(self.head(x))}  # (B, 44, H, W)
        tokens, previous = [], None
        for chain in self.tokens:
            previous = chain(flat, previous, self.cfg.token_residual)
            tokens.append(previous)
        out["tokens"] = torch.stack(tokens, dim=1)  # (B, 8, 300)
        if self.multihot is not None:
            out["multihot"] = torch.sigmoid(self.multihot(out["tokens"].flatten(1)))  # (B, V)
        return out

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (encoder, bridge, decoder, head, tokens, multihot) and the total."""
        parts = {"encoder": self.encoder, "bridge": self.bridge, "decoder": self.decoder, "head": self.head,
                 "tokens": self.tokens, "multihot": self.multihot}
        counts = {k: sum(p.numel() for p in m.parameters()) if m is not None else 0 for k, m in parts.items()}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts


def _glorot(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
