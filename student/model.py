"""The Y-MAP-Net network (DESIGN 6): U-Net-like encoder / bridge / decoder for 44 maps, plus 8 caption tokens."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from student.config import ModelConfig


class ResBlock(nn.Module):
    """2x [3x3 conv -> BatchNorm -> LeakyReLU], spatial dropout on that body, plus a (1x1-projected when
    needed) shortcut: the authors' ``conv_block`` (dropout before the residual add, so the sum that feeds the
    skips is not dropped)."""

    def __init__(self, cin: int, cout: int, cfg: ModelConfig, dropout: float = 0.0) -> None:
        super().__init__()
        s, eps, momentum = cfg.leaky_slope, cfg.bn_eps, cfg.bn_momentum
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout, eps, momentum), nn.LeakyReLU(s),
            nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout, eps, momentum), nn.LeakyReLU(s),
        )
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.body(x)) + self.shortcut(x)


class UpLevel(nn.Module):
    """2x2 transposed conv, concat with the encoder skip, residual block (no dropout), added to the upsampled
    input."""

    def __init__(self, cin: int, cskip: int, cout: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.block = ResBlock(cout + cskip, cout, cfg)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)  # (B, cout, 2h, 2w)
        return up + self.block(torch.cat([up, skip], dim=1))


class TokenChain(nn.Module):
    """One caption token, as the authors' ``add_token_output``: ``token_layers`` x [dense (token_width) ->
    LeakyReLU -> LayerNorm -> dropout], a 300-d dense -> LeakyReLU -> LayerNorm, the previous token's output
    added at ``token_residual``, and the 300-d tanh output layer."""

    def __init__(self, cin: int, cfg: ModelConfig, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(cfg.token_layers):
            layers += [nn.Linear(cin if i == 0 else cfg.token_width, cfg.token_width), nn.LeakyReLU(cfg.leaky_slope),
                       nn.LayerNorm(cfg.token_width, eps=cfg.ln_eps), nn.Dropout(dropout)]  # also at 0: same keys
        self.body = nn.Sequential(*layers, nn.Linear(cfg.token_width, cfg.token_dim), nn.LeakyReLU(cfg.leaky_slope),
                                  nn.LayerNorm(cfg.token_dim, eps=cfg.ln_eps))
        self.out = nn.Linear(cfg.token_dim, cfg.token_dim)

    def forward(self, flat: torch.Tensor, previous: torch.Tensor | None, residual: float) -> torch.Tensor:
        z = self.body(flat)  # (B, 300)
        if previous is not None:
            z = z + residual * previous  # the previous token's tanh output, before the last dense layer
        return torch.tanh(self.out(z))


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
            enc.append(ResBlock(cin, c, cfg, cfg.encoder_dropout))
            cin = c
        self.encoder = nn.ModuleList(enc)
        bridge = []
        for d in cfg.bridge_dilations:  # the authors' bridge: activation inside the conv, then BatchNorm
            bridge += [nn.Conv2d(cin, cfg.bridge_filters, 3, padding=d, dilation=d), nn.LeakyReLU(s),
                       nn.BatchNorm2d(cfg.bridge_filters, cfg.bn_eps, cfg.bn_momentum)]
            cin = cfg.bridge_filters
        self.bridge = nn.Sequential(*bridge)
        dec = []
        for cout, cskip in zip(cfg.decoder_filters, reversed(cfg.encoder_filters)):
            dec.append(UpLevel(cin, cskip, cout, cfg))
            cin = cout
        self.decoder = nn.ModuleList(dec)
        self.head = nn.Sequential(nn.Conv2d(cin, cfg.pixelwise_filters, 1), nn.LeakyReLU(s),
                                  nn.Conv2d(cfg.pixelwise_filters, cfg.out_channels, 1))
        self.tokens = nn.ModuleList(
            TokenChain(cfg.flat_features, cfg, cfg.token_dropout / (i + 1))
            for i in range(cfg.num_tokens))
        self.apply(_glorot)  # before the optional head exists: the same seed gives the same network with or without it
        self.multihot = None
        if cfg.multihot_vocab:
            w = cfg.multihot_width
            self.multihot = nn.Sequential(
                nn.Linear(cfg.num_tokens * cfg.token_dim, w), nn.LeakyReLU(s),
                nn.Linear(w, w), nn.LeakyReLU(s), nn.Linear(w, cfg.multihot_vocab))
            self.multihot.apply(_glorot)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the network.

        Args:
            images: (B, 3, H, W) uint8 RGB (or float already in [0, 1]), H = W = ``cfg.image_size``.

        Returns:
            ``{"maps": (B, 44, H, W), "tokens": (B, 8, 300)}`` in [-1, 1], plus ``"multihot"``
            (B, V) probabilities when the head is enabled (computed from the tokens detached: its loss never
            trains the token branch).
        """
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        skips = []
        for block in self.encoder:
            x = block(x)
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
            out["multihot"] = torch.sigmoid(self.multihot(out["tokens"].detach().flatten(1)))  # (B, V)
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
