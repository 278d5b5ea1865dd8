"""VisionGPT2 (ViT-B/16 encoder, GPT-2 decoder cross-attending block by block) with KV-cached generation.

Parameter names of the official ``captioner.pt`` (a plain state dict, 429 keys at full size):

- ``cls_token`` (1, 1, C), ``pos_embed`` (1, 1 + patches, C), ``patch_embed.proj.{weight,bias}``: timm ViT stem
- ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}``: timm ViT blocks (no final norm)
- ``transformer.wte.weight`` and ``lm_head.weight``: tied token embedding / output projection
- ``transformer.wpe.weight``: (seq_len, C) positions; ``transformer.ln_f.{weight,bias}``
- ``transformer.h.N.{ln_1,ln_2,ln_3}.{weight,bias}``: pre-norms of self-, cross-attention and MLP
- ``transformer.h.N.attn.c_attn.{weight,bias}`` (3C, C), ``.attn.c_proj.*``, ``.attn.mask`` (1, 1, T, T) buffer
- ``transformer.h.N.cross_attn.{q,k,v,c_proj}.{weight,bias}``: nn.Linear (not GPT-2's Conv1D)
- ``transformer.h.N.mlp.{c_fc,c_proj}.{weight,bias}``
Decoder block N cross-attends to the output of ViT block N.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Cache = list[tuple[torch.Tensor, torch.Tensor]]


#: The bounds of each size a ``config.json`` may ask for, ``(least, most)``: a few times the largest published
#: configuration (the release is GPT-2 small on ViT-B/16: vocabulary 50257, width 768, 12 heads, 1024 positions, 12
#: blocks, MLP ratio 4, 224-pixel images of 16-pixel patches; GPT-2 XL is 1600 wide and 48 blocks deep, the largest
#: common vocabularies about 256k). The file is data; these keep it from asking for unbounded memory or time before
#: the weights are compared with the model.
LIMITS: dict[str, tuple[int, ...]] = {
    "vocab_size": (1, 262144), "embed_dim": (1, 4096), "num_heads": (1, 128), "seq_len": (1, 8192),
    "depth": (1, 64), "mlp_ratio": (1, 16), "image_size": (1, 2048), "patch_size": (1, 64),
}


@dataclass(frozen=True)
class VisionGPT2Config:
    """Sizes of VisionGPT2; the defaults are the released model (ViT-B/16 at 224, GPT-2 small)."""

    vocab_size: int = 50257
    embed_dim: int = 768
    num_heads: int = 12
    seq_len: int = 1024
    depth: int = 12
    mlp_ratio: int = 4
    image_size: int = 224
    patch_size: int = 16

    @classmethod
    def tiny(cls, vocab_size: int) -> "VisionGPT2Config":
        """A two-block configuration for tests."""
        return cls(vocab_size=vocab_size, embed_dim=32, num_heads=2, seq_len=64, depth=2, image_size=32)


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, C) -> (B, heads, T, C / heads)."""
    b, t, c = x.shape
    return x.view(b, t, heads, c // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, D) -> (B, T, heads * D)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class ViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class ViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ViTBlock(nn.Module):
    """timm's pre-norm ViT block (LayerNorm eps 1e-6)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ViTMlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CausalSelfAttention(nn.Module):
    """GPT-2 self-attention with nn.Linear projections and an optional KV cache."""

    def __init__(self, dim: int, heads: int, seq_len: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.register_buffer("mask", torch.tril(torch.ones(1, 1, seq_len, seq_len)))

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        q, k, v = (_split(t, self.heads) for t in self.c_attn(x).chunk(3, dim=-1))
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        t_q, t_k = q.shape[2], k.shape[2]
        # queries are the last t_q positions of t_k: row i sees keys up to t_k - t_q + i (one new query sees all)
        allowed = self.mask[0, 0, t_k - t_q:t_k, :t_k].bool() if t_q > 1 else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.c_proj(_merge(out)), (k, v)


class CrossAttention(nn.Module):
    """Attention from the text positions to one ViT block's tokens."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, dim)

    def keys_values(self, enc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, C) encoder tokens -> keys and values (B, heads, N, D), computed once per image."""
        return _split(self.k(enc), self.heads), _split(self.v(enc), self.heads)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        out = F.scaled_dot_product_attention(_split(self.q(x), self.heads), kv[0], kv[1])
        return self.c_proj(_merge(out))


class GPT2Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class GPT2Block(nn.Module):
    """Self-attention, cross-attention to the image, MLP; each pre-normed and residual."""

    def __init__(self, cfg: VisionGPT2Config) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.ln_1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, cfg.num_heads, cfg.seq_len)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = GPT2Mlp(d, d * cfg.mlp_ratio)
        self.ln_3 = nn.LayerNorm(d)
        self.cross_attn = CrossAttention(d, cfg.num_heads)

    def forward(self, x: torch.Tensor, cross_kv: tuple[torch.Tensor, torch.Tensor],
                past: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, present = self.attn(self.ln_1(x), past)
        x = x + a
        x = x + self.cross_attn(self.ln_2(x), cross_kv)
        return x + self.mlp(self.ln_3(x)), present


class VisionGPT2(nn.Module):
    """The captioner: ``encode`` an image batch once, then ``generate`` token ids.

    Args:
        cfg: model sizes.
    """

    def __init__(self, cfg: VisionGPT2Config) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 1e-6)
        self.pos_embed = nn.Parameter(torch.randn(1, patches + 1, d) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, d),
            wpe=nn.Embedding(cfg.seq_len, d),
            h=nn.ModuleList(GPT2Block(cfg) for _ in range(cfg.depth)),
            ln_f=nn.LayerNorm(d),
        ))
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, yet both names are in the state dict

    def encode(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(B, 3, S, S) images normalised to [-1, 1] -> per decoder block the cross-attention keys/values."""
        x = self.patch_embed.proj(images).flatten(2).transpose(1, 2)  # (B, patches, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        kvs = []
        for vit, dec in zip(self.blocks, self.transformer.h):
            x = vit(x)
            kvs.append(dec.cross_attn.keys_values(x))
        return kvs

    def logits(self, ids: torch.Tensor, cross: list[tuple[torch.Tensor, torch.Tensor]], start: int = 0,
               cache: Cache | None = None) -> tuple[torch.Tensor, Cache]:
        """Next-token logits of the last position.

        Args:
            ids: (B, T) token ids at positions ``start .. start + T - 1``.
            cross: ``encode``'s output.
            start: position of ``ids[:, 0]`` (the cache length).
            cache: per block (keys, values) of the earlier positions, or None.

        Returns:
            (B, vocab) logits and the updated cache.
        """
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)
        x = self.transformer.wte(ids) + self.transformer.wpe(pos)
        present: Cache = []
        for i, block in enumerate(self.transformer.h):
            x, kv = block(x, cross[i], None if cache is None else cache[i])
            present.append(kv)
        return self.lm_head(self.transformer.ln_f(x[:, -1])), present

    @torch.no_grad()
    def generate(self, images: torch.Tensor, *, bos_id: int, eos_id: int, max_tokens: int = 50,
                 sample: bool = False, temperature: float = 1.0, use_cache: bool = True,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None) -> list[list[int]]:
        """Caption token ids per image, without the start token and cut before the first end token.

        Args:
            images: (B, 3, S, S) normalised images.
            bos_id: the start token fed first.
            eos_id: generation of an image stops at this token.
            max_tokens: most generated tokens per image.
            sample: draw from softmax(logits / temperature) instead of taking the argmax.
            temperature: sampling temperature (> 0).
            use_cache: reuse keys/values of earlier positions (else recompute the whole prefix each step).
            generator: random generator for sampling, or one per image (then an image's caption does not
                depend on the other images of the batch).

        Returns:
            One list of token ids per image.
        """
        if max_tokens + 1 > self.cfg.seq_len:
            raise ValueError(f"max_tokens {max_tokens} exceeds the model's context of {self.cfg.seq_len}")
        cross = self.encode(images)
        b = images.shape[0]
        seq = torch.full((b, 1), bos_id, dtype=torch.long, device=images.device)
        done = torch.zeros(b, dtype=torch.bool, device=images.device)
        cache: Cache | None = None
        for _ in range(max_tokens):
            if use_cache:
                logits, cache = self.logits(seq[:, -1:], cross, seq.shape[1] - 1, cache)
            else:
                logits, _ = self.logits(seq, cross)
            logits = logits.float()
            if sample:
                probs = (logits / temperature).softmax(-1)
                if isinstance(generator, Sequence):
                    nxt = torch.cat([torch.multinomial(probs[i:i + 1], 1, generator=g)[:, 0]
                                     for i, g in enumerate(generator)])
                else:
                    nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            seq = torch.cat([seq, nxt[:, None]], 1)
            done |= nxt == eos_id
            if bool(done.all()):
                break
        out = []
        for row in seq[:, 1:].tolist():
            out.append(row[:row.index(eos_id)] if eos_id in row else row)
        return out
