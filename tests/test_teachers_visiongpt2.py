"""VisionGPT2 port: official parameter names and shapes, strict loading with one-line errors, KV-cached
generation equal to the uncached and one-image-at-a-time runs, and the teacher on real photos."""

from __future__ import annotations

import json
import os

import pytest
import torch
from skimage import data

from teachers import TeacherError, TeacherInput, create_teacher
from teachers.tiny import save_tiny_checkpoint as save_tiny_by_name
from teachers.visiongpt2 import load_tokenizer, load_visiongpt2, save_tiny_checkpoint
from teachers.visiongpt2_model import VisionGPT2, VisionGPT2Config


def _official_keys(cfg: VisionGPT2Config) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``captioner.pt``, written out from the official model code (timm ViT + GPT-2)."""
    d, hid, p = cfg.embed_dim, cfg.embed_dim * cfg.mlp_ratio, cfg.patch_size
    keys: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d), "pos_embed": (1, (cfg.image_size // p) ** 2 + 1, d),
        "patch_embed.proj.weight": (d, 3, p, p), "patch_embed.proj.bias": (d,),
        "transformer.wte.weight": (cfg.vocab_size, d), "transformer.wpe.weight": (cfg.seq_len, d),
        "transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,), "lm_head.weight": (cfg.vocab_size, d),
    }

    def linear(name, din, dout):
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (dout, din), (dout,)

    for i in range(cfg.depth):
        b, h = f"blocks.{i}", f"transformer.h.{i}"
        for norm in (f"{b}.norm1", f"{b}.norm2", f"{h}.ln_1", f"{h}.ln_2", f"{h}.ln_3"):
            keys[f"{norm}.weight"], keys[f"{norm}.bias"] = (d,), (d,)
        linear(f"{b}.attn.qkv", d, 3 * d), linear(f"{b}.attn.proj", d, d)
        linear(f"{b}.mlp.fc1", d, hid), linear(f"{b}.mlp.fc2", hid, d)
        linear(f"{h}.attn.c_attn", d, 3 * d), linear(f"{h}.attn.c_proj", d, d)
        keys[f"{h}.attn.mask"] = (1, 1, cfg.seq_len, cfg.seq_len)
        for proj in ("q", "k", "v", "c_proj"):
            linear(f"{h}.cross_attn.{proj}", d, d)
        linear(f"{h}.mlp.c_fc", d, hid), linear(f"{h}.mlp.c_proj", hid, d)
    return keys


def test_full_size_model_has_the_429_official_names_and_shapes() -> None:
    cfg = VisionGPT2Config()
    with torch.device("meta"):
        model = VisionGPT2(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(got) == 429
    assert got == _official_keys(cfg)
    assert got["pos_embed"] == (1, 197, 768) and got["transformer.wte.weight"] == (50257, 768)
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("visiongpt2"), seed=0)


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    model, cfg, _ = load_visiongpt2(tiny_dir)
    return model.double(), cfg, load_tokenizer(tiny_dir)


def test_tiny_checkpoint_is_a_plain_state_dict_loaded_strictly(tiny_dir, tmp_path) -> None:
    sd = torch.load(os.path.join(tiny_dir, "captioner.pt"), weights_only=True)
    with open(os.path.join(tiny_dir, "config.json")) as f:
        cfg = VisionGPT2Config(**json.load(f))
    assert {k: tuple(v.shape) for k, v in sd.items()} == _official_keys(cfg)
    assert torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"])
    assert torch.equal(sd["transformer.h.1.attn.mask"][0, 0], torch.tril(torch.ones(cfg.seq_len, cfg.seq_len)))
    model, _, weights = load_visiongpt2(tiny_dir)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # the same seed writes the same weights; a folder may hold captioner.safetensors instead
    again = save_tiny_by_name("visiongpt2", tmp_path / "again", seed=0)
    sd2 = torch.load(os.path.join(again, "captioner.pt"), weights_only=True)
    assert all(torch.equal(v, sd2[k]) for k, v in sd.items())
    from safetensors.torch import save_file

    os.remove(os.path.join(again, "captioner.pt"))
    save_file({k: v.clone() for k, v in sd.items()}, os.path.join(again, "captioner.safetensors"))
    model2, _, weights2 = load_visiongpt2(again)
    assert weights2.endswith("captioner.safetensors")
    assert all(torch.equal(v, sd[k]) for k, v in model2.state_dict().items())


@pytest.mark.parametrize("change, needle", [
    ("missing", "missing key 'transformer.h.1.attn.mask'"),
    ("extra", "unexpected key 'norm.weight'"),
    ("shape", "key 'transformer.wpe.weight' has shape (8, 32)"),
])
def test_checkpoint_mismatch_is_one_clear_error(tiny_dir, tmp_path, change, needle) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in os.listdir(tiny_dir):
        if name != "captioner.pt":
            (bad / name).write_bytes(open(os.path.join(tiny_dir, name), "rb").read())
    sd = torch.load(os.path.join(tiny_dir, "captioner.pt"), weights_only=True)
    if change == "missing":
        del sd["transformer.h.1.attn.mask"]
    elif change == "extra":
        sd["norm.weight"] = torch.ones(32)  # timm's final ViT norm is not part of VisionGPT2
    else:
        sd["transformer.wpe.weight"] = torch.zeros(8, 32)
    torch.save(sd, bad / "captioner.pt")
    with pytest.raises(TeacherError) as err:
        create_teacher("visiongpt2", checkpoint=str(bad))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_tokenizer_or_parameters_are_one_clear_error(tiny_dir, tmp_path) -> None:
    with pytest.raises(TeacherError) as err:
        create_teacher("visiongpt2", checkpoint=tiny_dir, tokenizer=str(tmp_path / "no-tokenizer"))
    assert "cannot load the GPT-2 tokenizer" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(TeacherError, match="temperature"):
        create_teacher("visiongpt2", checkpoint=tiny_dir, temperature=0.0)
    with pytest.raises(TeacherError, match="max_tokens"):
        create_teacher("visiongpt2", checkpoint=tiny_dir, max_tokens=64)


def _images(cfg: VisionGPT2Config) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 3, cfg.image_size, cfg.image_size, generator=g, dtype=torch.float64) * 2 - 1


def test_generation_is_the_same_batched_single_cached_and_uncached(tiny_model) -> None:
    model, cfg, tok = tiny_model
    images = _images(cfg)
    kw = dict(bos_id=tok.bos_token_id, eos_id=-1, max_tokens=16)  # no end token: full-length sequences
    batched = model.generate(images, **kw)
    uncached = model.generate(images, use_cache=False, **kw)
    single = [model.generate(images[i:i + 1], **kw)[0] for i in range(len(images))]
    single_uncached = [model.generate(images[i:i + 1], use_cache=False, **kw)[0] for i in range(len(images))]
    assert all(len(row) == 16 for row in batched)
    assert batched == uncached == single == single_uncached
    assert len({tuple(r) for r in batched}) > 1  # the image matters
    # the cached step logits equal the full recomputation
    seq = torch.tensor([[tok.bos_token_id] + batched[0][:5]])
    cross = model.encode(images[:1])
    full, _ = model.logits(seq, cross)
    _, cache = model.logits(seq[:, :-1], cross)
    step, _ = model.logits(seq[:, -1:], cross, start=seq.shape[1] - 1, cache=cache)
    assert torch.allclose(full, step, atol=1e-10)


def test_generation_stops_at_the_end_token(tiny_model) -> None:
    model, cfg, tok = tiny_model
    images = _images(cfg)
    free = model.generate(images, bos_id=tok.bos_token_id, eos_id=-1, max_tokens=24)
    end = free[0][5]  # pretend this token ends the caption
    cut = model.generate(images, bos_id=tok.bos_token_id, eos_id=end, max_tokens=24)
    for full, row in zip(free, cut):
        assert row == (full[:full.index(end)] if end in full else full)
    assert cut[0] == free[0][:free[0].index(end)] and len(cut[0]) <= 5


def test_sampling_follows_the_seed_and_the_temperature(tiny_model) -> None:
    model, cfg, tok = tiny_model
    images = _images(cfg)
    kw = dict(bos_id=tok.bos_token_id, eos_id=-1, max_tokens=16, sample=True)

    def run(temperature, seed, use_cache=True):
        gen = torch.Generator().manual_seed(seed)
        return model.generate(images, temperature=temperature, generator=gen, use_cache=use_cache, **kw)

    assert run(1.0, 0) == run(1.0, 0) == run(1.0, 0, use_cache=False)
    assert run(1.0, 0) != run(1.0, 1)
    greedy = model.generate(images, bos_id=tok.bos_token_id, eos_id=-1, max_tokens=16)
    assert run(1e-4, 3) == greedy  # a vanishing temperature is greedy decoding


def test_teacher_on_real_photos_returns_one_caption_each(tiny_dir) -> None:
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    teacher = create_teacher("visiongpt2", checkpoint=tiny_dir, max_tokens=12, batch_size=3)
    assert teacher.spec.task == "caption"
    out = teacher([TeacherInput(im, image_id=i) for i, im in enumerate(photos)])
    assert len(out) == 4
    ids = teacher.model.generate(teacher.preprocess(photos), bos_id=teacher.bos_id, eos_id=teacher.eos_id,
                                 max_tokens=12)
    for pred, row in zip(out, ids):
        assert set(pred) == {"captions"} and len(pred["captions"]) == 1
        assert pred["captions"][0] == teacher.tokenizer.decode(row, skip_special_tokens=True).strip()
    assert len({p["captions"][0] for p in out}) > 1
    sampler = create_teacher("visiongpt2", checkpoint=tiny_dir, max_tokens=12, sample=True, temperature=0.7)
    inputs = [TeacherInput(im) for im in photos[:2]]
    assert sampler(inputs) == sampler(inputs)  # the generator is reseeded per call
    assert sampler.fingerprint() != teacher.fingerprint()


def test_sampled_captions_depend_neither_on_the_batch_nor_on_the_order(tiny_dir) -> None:
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    inputs = [TeacherInput(im, image_id=i) for i, im in enumerate(photos)]
    one = create_teacher("visiongpt2", checkpoint=tiny_dir, max_tokens=10, sample=True, batch_size=1)
    four = create_teacher("visiongpt2", checkpoint=tiny_dir, max_tokens=10, sample=True, batch_size=4)
    alone = one(inputs)
    assert four(inputs) == alone
    assert four(inputs[::-1]) == alone[::-1]


def test_fingerprint_follows_the_files_not_the_folder(tiny_dir, tmp_path) -> None:
    import shutil

    base = create_teacher("visiongpt2", checkpoint=tiny_dir).fingerprint()
    copy = shutil.copytree(tiny_dir, tmp_path / "copy")
    (copy / "README.md").write_text("notes")  # and a note beside the weights changes nothing either
    assert create_teacher("visiongpt2", checkpoint=str(copy)).fingerprint() == base
    assert create_teacher("visiongpt2", checkpoint=tiny_dir, tokenizer=str(copy) + "/").fingerprint() == base
    config = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 7}))
    assert create_teacher("visiongpt2", checkpoint=str(copy)).fingerprint() != base  # the tokenizer changed


def test_safetensors_with_tied_weights_saved_once_load(tiny_dir, tmp_path) -> None:
    import shutil

    import safetensors.torch

    model, _, _ = load_visiongpt2(tiny_dir)
    folder = tmp_path / "st"
    shutil.copytree(tiny_dir, folder, ignore=shutil.ignore_patterns("captioner.pt"))
    safetensors.torch.save_model(model, str(folder / "captioner.safetensors"))  # drops one of each tied pair
    loaded = create_teacher("visiongpt2", checkpoint=str(folder)).model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key
    state = {k: v.clone() for k, v in model.state_dict().items()}
    del state["transformer.wte.weight"]  # either one of the pair may be the one kept
    safetensors.torch.save_file(state, str(folder / "captioner.safetensors"))
    other = create_teacher("visiongpt2", checkpoint=str(folder)).model.state_dict()
    assert torch.equal(other["transformer.wte.weight"], model.state_dict()["lm_head.weight"])


@pytest.mark.parametrize("params", [{"temperature": float("nan")}, {"temperature": 0.0}])
def test_impossible_sampling_parameters(tiny_dir, params) -> None:
    with pytest.raises(TeacherError, match="temperature must be > 0"):
        create_teacher("visiongpt2", checkpoint=tiny_dir, sample=True, **params)


def test_a_hugging_face_config_beside_the_weights_is_not_read_as_the_model_sizes(tmp_path) -> None:
    import json

    from teachers.visiongpt2 import _weights_and_config
    from teachers.visiongpt2_model import VisionGPT2Config

    # captioner.pt put into the folder of a GPT-2 hub snapshot (its tokenizer), whose config.json is GPT-2's
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 768, "n_layer": 12}))
    (tmp_path / "captioner.pt").write_bytes(b"")
    weights, cfg = _weights_and_config(str(tmp_path))
    assert weights == str(tmp_path / "captioner.pt") and cfg == VisionGPT2Config()
