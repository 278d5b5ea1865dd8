"""VisionGPT2 caption teacher: the official ``captioner.pt`` state dict on a plain-PyTorch port.

``checkpoint`` is the ``captioner.pt`` file (or ``.safetensors``), or a folder holding ``captioner.pt`` (or
``captioner.safetensors``), optionally a ``config.json`` of ``VisionGPT2Config`` fields (sizes that differ
from the release; bounded by ``visiongpt2_model.LIMITS`` and checked against the weights on a meta-device
model before the real one is built) and optionally the tokenizer files. The state dict must match the model
exactly (429 keys at full size). Images are resized to 224x224 (bilinear, as albumentations' ``Resize``) and scaled to
[-1, 1]; generation starts from GPT-2's ``<|endoftext|>`` token and stops at it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict
from typing import Any

import cv2
import numpy as np
import torch

from shards.errors import parse_json
from shards.streams import FileTooLarge, read_bytes
from teachers.base import (Teacher, TeacherError, TeacherInput, TeacherSpec, expand_home, model_cache,
                           sha256_of_path)
from teachers.loading import boolean, check_vocabulary, first_line, integer, quiet_transformers, sized_config
from teachers.strict_load import check_fits, load_strict, read_checkpoint, safetensors_layout, tensor_layout
from teachers.visiongpt2_model import LIMITS, VisionGPT2, VisionGPT2Config

TEACHER = "visiongpt2"
WEIGHTS_NAME = "captioner.pt"
#: The files of a GPT-2 tokenizer folder that decide its output.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
SAFETENSORS_NAME = "captioner.safetensors"
CONFIG_NAME = "config.json"
#: The largest ``config.json`` read: the sizes of this model take a few hundred bytes.
CONFIG_MAX_BYTES = 1 << 16
TINY_CORPUS = [
    "a man riding a horse on a beach", "a cat sitting on a red chair", "two dogs playing with a ball",
    "a plate of food on a wooden table", "a woman holding an umbrella in the rain", "a bus parked on a street",
    "a person surfing a large wave", "a kitchen with a stove and a sink", "a group of people standing outside",
]


def _config(fields: Any, source: str) -> VisionGPT2Config:
    """The ``VisionGPT2Config`` of a ``config.json``'s fields, each size bounded (``LIMITS``) and consistent;
    anything else is one TeacherError naming the file and the field."""
    cfg = sized_config(VisionGPT2Config, fields, LIMITS, teacher=TEACHER, source=source)
    where = f"teacher {TEACHER!r}: {source}: config"
    if cfg.embed_dim % cfg.num_heads:
        raise TeacherError(f"{where} field 'embed_dim' {cfg.embed_dim} is not divisible by 'num_heads' "
                           f"{cfg.num_heads}")
    if cfg.image_size < cfg.patch_size:
        raise TeacherError(f"{where} field 'image_size' {cfg.image_size} is smaller than 'patch_size' "
                           f"{cfg.patch_size}")
    return cfg


def _weights_and_config(checkpoint: str) -> tuple[str, VisionGPT2Config]:
    """Resolve the weights file and the model sizes of a checkpoint file or folder."""
    fields: dict[str, Any] = {}
    source = checkpoint
    if os.path.isdir(checkpoint):
        weights = os.path.join(checkpoint, SAFETENSORS_NAME)
        if not os.path.isfile(weights):
            weights = os.path.join(checkpoint, WEIGHTS_NAME)
        cfg_path = os.path.join(checkpoint, CONFIG_NAME)
        if os.path.isfile(cfg_path):
            source = cfg_path
            try:
                fields = parse_json(read_bytes(cfg_path, limit=CONFIG_MAX_BYTES))
            except FileTooLarge:
                raise TeacherError(f"teacher {TEACHER!r}: {cfg_path} holds more than {CONFIG_MAX_BYTES} bytes; a "
                                   "config of model sizes has a few hundred") from None
            except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8, an integer too long to parse
                raise TeacherError(f"teacher {TEACHER!r}: cannot read {cfg_path} ({first_line(exc)})") from None
            if isinstance(fields, dict) and "model_type" in fields:  # a Hugging Face config (a GPT-2 snapshot's
                fields = {}  # tokenizer folder holds one): not sizes of this model, whose defaults are GPT-2's
    else:
        weights = checkpoint
    return weights, _config(fields, source)


def load_visiongpt2(checkpoint: str | os.PathLike) -> tuple[VisionGPT2, VisionGPT2Config, str]:
    """Build the model of a checkpoint file or folder and load its state dict strictly.

    The sizes of ``config.json`` are data: they are bounded (``LIMITS``), and the model they describe is built on
    the meta device and compared with the weights (``check_fits``: names, shapes, and bytes of data behind them)
    before the real model is built, so a small file cannot make this allocate a large model. A
    ``.safetensors`` file is compared from its header, before its tensors are read.

    Args:
        checkpoint: ``captioner.pt`` / ``.safetensors`` file, or a folder holding ``captioner.pt``.

    Returns:
        The model in eval mode on the CPU, its configuration and the weights file path.
    """
    weights, cfg = _weights_and_config(os.path.expanduser(str(checkpoint)))
    if weights.endswith(".safetensors"):
        check_fits(lambda: VisionGPT2(cfg), safetensors_layout(weights, TEACHER), prefix="", source=weights,
                   teacher=TEACHER)
        state = read_checkpoint(weights, TEACHER)
    else:
        state = read_checkpoint(weights, TEACHER)
        check_fits(lambda: VisionGPT2(cfg), tensor_layout(state), prefix="", source=weights, teacher=TEACHER)
    model = VisionGPT2(cfg)
    load_strict(model, state, prefix="", source=weights, teacher=TEACHER)
    return model.eval(), cfg, weights


def load_tokenizer(name_or_path: str) -> Any:
    """GPT-2's tokenizer from a local folder or a hub id (from the local cache when offline)."""
    from transformers import GPT2TokenizerFast

    try:
        with quiet_transformers():
            return GPT2TokenizerFast.from_pretrained(name_or_path, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - any loader failure is one user-facing line
        raise TeacherError(f"teacher 'visiongpt2': cannot load the GPT-2 tokenizer {name_or_path!r} "
                           f"({type(exc).__name__}); pass tokenizer=<folder with vocab.json and merges.txt>") from None


def save_random_checkpoint(out_dir: str | os.PathLike, cfg: VisionGPT2Config | None = None, seed: int = 0) -> str:
    """Write a random VisionGPT2 folder: ``captioner.pt``, ``config.json`` and a byte-level BPE tokenizer.

    The tokenizer is trained on a few captions; for a vocabulary larger than that (the released 50257) it is
    padded with filler tokens.

    Args:
        out_dir: folder to write into (created if needed).
        cfg: model sizes; default ``VisionGPT2Config.tiny`` sized to the trained tokenizer.
        seed: torch seed of the random weights.

    Returns:
        The folder, to pass as ``checkpoint=``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    os.makedirs(out_dir, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(TINY_CORPUS, trainer)
    tok = GPT2TokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>")
    cfg = cfg or VisionGPT2Config.tiny(vocab_size=len(tok))
    if cfg.vocab_size < len(tok):
        raise ValueError(f"vocab_size must be at least {len(tok)}, got {cfg.vocab_size}")
    tok.add_tokens([f"<w{i}>" for i in range(cfg.vocab_size - len(tok))])
    tok.save_pretrained(str(out_dir))
    torch.manual_seed(seed)
    torch.save(VisionGPT2(cfg).state_dict(), os.path.join(str(out_dir), WEIGHTS_NAME))
    with open(os.path.join(str(out_dir), CONFIG_NAME), "w") as f:
        json.dump(asdict(cfg), f, indent=1)
    return str(out_dir)


def save_tiny_checkpoint(out_dir: str | os.PathLike, seed: int = 0) -> str:
    """Write a tiny random VisionGPT2 folder for tests; returns the ``checkpoint=`` folder."""
    return save_random_checkpoint(out_dir, None, seed)


class VisionGPT2Teacher(Teacher):
    """VisionGPT2 image captioner.

    Args:
        checkpoint: ``captioner.pt`` or a folder holding it (see the module docstring).
        tokenizer: GPT-2 tokenizer folder or hub id; default: the checkpoint folder if it holds one, else "gpt2".
        max_tokens: most tokens per caption (the official default is 50).
        sample: sample with ``temperature`` instead of greedy decoding.
        temperature: sampling temperature (> 0).
        seed: seed of sampling, combined with each image's id (so a caption depends neither on the batch nor on
            the order).
        device, dtype, batch_size: see ``Teacher``.
    """

    name = "visiongpt2"
    spec = TeacherSpec(
        task="caption",
        description="VisionGPT2 (ViT-B/16 + GPT-2 small with per-block cross-attention), plain-PyTorch port",
        input_size="224x224 resize, mean/std 0.5",
        outputs={"captions": "list of one str"},
    )

    def __init__(self, *, checkpoint: str | None = None, tokenizer: str | None = None, max_tokens: int = 50,
                 sample: bool = False, temperature: float = 1.0, seed: int = 0, device: str = "cpu",
                 dtype: str = "float32", batch_size: int = 16) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        max_tokens, sample = integer("max_tokens", max_tokens, 1), boolean("sample", sample)
        if integer("seed", seed, 0) >= 2**32:
            raise TeacherError(f"seed must be an integer in 0..{2**32 - 1}, got {seed!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not 0 < temperature < float("inf"):  # also refuses NaN
            raise TeacherError(f"temperature must be > 0, got {temperature!r}")
        self.checkpoint = os.path.expanduser(self.resolve_checkpoint(checkpoint) or self.default_checkpoint())
        if checkpoint is None and not os.path.exists(self.checkpoint):
            raise TeacherError(f"teacher 'visiongpt2': no checkpoint given and {self.checkpoint} does not exist; "
                               "download captioner.pt of github.com/shreydan/VisionGPT2 and pass checkpoint= "
                               "(pipeline: --caption-checkpoint)")
        self.model, self.cfg, weights = load_visiongpt2(self.checkpoint)
        if max_tokens + 1 > self.cfg.seq_len:
            raise TeacherError(f"max_tokens must be in 1..{self.cfg.seq_len - 1}, got {max_tokens}")
        if tokenizer is None:
            has_tok = os.path.isdir(self.checkpoint) and os.path.isfile(os.path.join(self.checkpoint,
                                                                                      "tokenizer.json"))
            tokenizer = self.checkpoint if has_tok else "gpt2"
        self.tokenizer_name = tokenizer = expand_home(tokenizer)
        # a local tokenizer by its files (where the folder lies changes nothing), a hub one by its name
        self._tokenizer_id = (f"sha256:{sha256_of_path(tokenizer, TOKENIZER_FILES)}" if os.path.isdir(tokenizer)
                              else tokenizer)
        self.tokenizer = load_tokenizer(tokenizer)
        check_vocabulary(self.name, self.tokenizer, tokenizer, self.cfg.vocab_size)
        self.eos_id = self.tokenizer.eos_token_id
        self.bos_id = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eos_id
        self.max_tokens, self.sample, self.temperature, self.seed = max_tokens, sample, temperature, seed
        self.model.to(device)
        self._weights_sha = sha256_of_path(weights)

    @classmethod
    def default_checkpoint(cls) -> str:
        """``<model cache>/visiongpt2/captioner.pt``: the model cache is ``$YMAP_DISTILL_CACHE``, else
        ``~/.cache/ymap-distill``."""
        return model_cache("visiongpt2", "captioner.pt")

    def identity(self) -> dict[str, Any]:
        ident = {"weights_sha256": self._weights_sha, "tokenizer": self._tokenizer_id,
                 "max_tokens": self.max_tokens, "sample": self.sample, "config": asdict(self.cfg)}
        if self.sample:
            ident.update(temperature=self.temperature, seed=self.seed, sampling="per-image")
        return ident

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """RGB uint8 images -> (B, 3, S, S) float in [-1, 1]."""
        size = self.cfg.image_size
        out = []
        for img in images:
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise TeacherError(f"teacher 'visiongpt2': needs (H, W, 3) uint8 RGB images, got {img.dtype} "
                                   f"{img.shape}")
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
            out.append(torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1.0)
        return torch.stack(out).to(self.device)

    @torch.inference_mode()
    def predict(self, inputs: list[TeacherInput]) -> list[dict[str, Any]]:
        images = self.preprocess([inp.image for inp in inputs])
        gen = None
        if self.sample:  # one generator per image, seeded by the image: batches and order change nothing
            gen = [torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + inp.image_id)
                   for inp in inputs]
        autocast = (torch.autocast("cuda", dtype=getattr(torch, self.dtype)) if self.dtype != "float32"
                    else contextlib.nullcontext())
        with autocast:
            ids = self.model.generate(images, bos_id=self.bos_id, eos_id=self.eos_id, max_tokens=self.max_tokens,
                                      sample=self.sample, temperature=self.temperature, generator=gen)
        return [{"captions": [self.tokenizer.decode(row, skip_special_tokens=True).strip()]} for row in ids]
