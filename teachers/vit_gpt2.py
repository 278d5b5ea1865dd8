"""Caption teacher: a transformers VisionEncoderDecoderModel (ViT encoder, GPT-2 decoder), batched generation."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from teachers.base import Teacher, TeacherError, TeacherInput, TeacherSpec
from teachers.loading import (check_vocabulary, checkpoint_identity, from_pretrained_strict, hub_revision, integer,
                              load_or_fail, quiet_transformers, torch_dtype)
from teachers.preprocess import resize_batch

DEFAULT_CHECKPOINT = "nlpconnect/vit-gpt2-image-captioning"


class ViTGPT2Teacher(Teacher):
    """Image captioning with a ViT + GPT-2 encoder-decoder; one caption per image.

    The checkpoint folder (or hub repo) holds the model, its tokenizer and its image processor config
    (input size, mean, std); the resize and normalisation run as tensor ops on the device.

    Args:
        checkpoint: hub id or a local ``save_pretrained`` folder (model + tokenizer + image processor).
        revision: hub revision to load (and fingerprint).
        num_beams: beam width; 1 = greedy decoding.
        max_length: maximum caption length in tokens.
        device, dtype, batch_size: see ``Teacher``.
    """

    name = "vit-gpt2"
    spec = TeacherSpec(
        task="caption",
        description="ViT-GPT2 captioner (transformers VisionEncoderDecoderModel, nlpconnect/vit-gpt2-image-captioning)",
        input_size="resized to the image processor's size (224 x 224, aspect not kept), bilinear, its mean/std",
        outputs={"captions": "list of one str"},
        units="text",
    )

    def __init__(self, *, checkpoint: str = DEFAULT_CHECKPOINT, revision: str | None = None, num_beams: int = 4,
                 max_length: int = 16, device: str = "cpu", dtype: str = "float32", batch_size: int = 16) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        num_beams, max_length = integer("num_beams", num_beams, 1), integer("max_length", max_length, 1)
        from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

        self.checkpoint = checkpoint = self.resolve_checkpoint(checkpoint)
        self.num_beams = int(num_beams)
        self.max_length = int(max_length)

        self.model = from_pretrained_strict(VisionEncoderDecoderModel, self.name, checkpoint, revision)
        with quiet_transformers():
            self.tokenizer, processor = load_or_fail(self.name, checkpoint, lambda: (
                AutoTokenizer.from_pretrained(checkpoint, revision=revision, trust_remote_code=False),
                AutoImageProcessor.from_pretrained(checkpoint, revision=revision, trust_remote_code=False)))
        # any HF captioner: its decoder's embedding may be padded to a multiple of 64 or 128 (50257 -> 50304)
        check_vocabulary(self.name, self.tokenizer, checkpoint, self.model.config.decoder.vocab_size, slack=128)
        self.model.to(device=device, dtype=torch_dtype(dtype)).eval()
        size = processor.size
        self.input_hw = (int(size["height"]), int(size["width"])) if "height" in size else \
            (int(size["shortest_edge"]),) * 2
        self.mean = tuple(float(m) for m in processor.image_mean)
        self.std = tuple(float(s) for s in processor.image_std)
        self.rescale = float(processor.rescale_factor)
        config = self.model.config
        self.start_id = config.decoder_start_token_id if config.decoder_start_token_id is not None \
            else self.tokenizer.bos_token_id
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else self.tokenizer.eos_token_id
        if self.start_id is None:
            raise TeacherError(f"teacher {self.name!r}: checkpoint {checkpoint!r} defines no decoder start token")
        positions = getattr(config.decoder, "n_positions", None) or getattr(config.decoder, "max_position_embeddings",
                                                                            None)
        if positions and self.max_length > positions:
            raise TeacherError(f"max_length must be at most {positions} (the decoder's positions), got {max_length}")
        self._identity = {**checkpoint_identity(checkpoint, hub_revision(self.model, revision)),
                          "num_beams": self.num_beams, "max_length": self.max_length}

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def predict(self, inputs: list[TeacherInput]) -> list[dict[str, Any]]:
        import torch

        with torch.inference_mode():
            x = resize_batch([i.image for i in inputs], self.input_hw, device=self.device,
                             dtype=torch_dtype(self.dtype), mean=self.mean, std=self.std, scale=self.rescale)
            with _without_attention_mask_warning():
                ids = self.model.generate(pixel_values=x, num_beams=self.num_beams, max_length=self.max_length,
                                          do_sample=False, decoder_start_token_id=self.start_id,
                                          pad_token_id=self.pad_id, eos_token_id=self.tokenizer.eos_token_id)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [{"captions": [t.strip()]} for t in texts]


class _AttentionMaskWarning(logging.Filter):
    """Drops generate()'s "attention mask is not set" warning: it is about padded text prompts, and the
    encoder's input here is whole images (nothing padded; the decoder's own mask is built by generate)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "attention mask" not in record.getMessage()


@contextlib.contextmanager
def _without_attention_mask_warning() -> Iterator[None]:
    """``_AttentionMaskWarning`` on transformers' generation logger for the time of one generate() call."""
    log = logging.getLogger("transformers.generation.utils")
    drop = _AttentionMaskWarning()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def save_tiny_checkpoint(out_dir: str, seed: int = 0) -> str:
    """Save a tiny random ViT + GPT-2 captioner, its byte-level BPE tokenizer and image processor; returns the folder.

    The tokenizer is trained here with ``tokenizers`` on a few captions (no download).
    """
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (GPT2Config, GPT2TokenizerFast, ViTConfig, ViTImageProcessor,
                              VisionEncoderDecoderConfig, VisionEncoderDecoderModel)

    torch.manual_seed(seed)
    corpus = ["a man riding a horse on a beach", "a cat sitting on a wooden table next to a cup of coffee",
              "a rocket launching into the blue sky", "an astronaut standing in front of a flag",
              "two people playing tennis on a court", "a plate of food with broccoli and rice"] * 4
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=320, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    eos = tokenizer.eos_token_id
    encoder = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=224, patch_size=16)
    decoder = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                         add_cross_attention=True, is_decoder=True, bos_token_id=eos, eos_token_id=eos)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = eos
    VisionEncoderDecoderModel(config=config).eval().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    processor = ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(out_dir)
    return str(out_dir)
