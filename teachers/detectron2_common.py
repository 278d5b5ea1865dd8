"""What the detectron2 teachers share: safe checkpoint and config reading, the model built and checked against its
weights, and detectron2's test input (resize, normalise, pad) with the images of one resized shape batched together.

Checkpoints load through detectron2's ``DetectionCheckpointer`` (name matching, legacy conversions, incompatible-key
report) but are READ safely: ``.pth`` files with ``strict_load.safe_torch_load``, legacy model-zoo ``.pkl`` pickles
with ``numpy_pickle.load_numpy_pickle`` (plain numeric arrays and containers); configs are merged as plain YAML data.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from abc import abstractmethod
from typing import Any, Iterator, Sequence

from teachers.base import Teacher, TeacherError, TeacherInput, expand_home, sha256_of_path
from teachers.loading import integer, load_or_fail, require
from teachers.numpy_pickle import load_numpy_pickle
from teachers.preprocess import check_image

FOLDER_CONFIG = "config.yaml"
FOLDER_WEIGHTS = ("model_final.pth", "model_final.pkl")


def read_weights(path: str, teacher: str = "detectron2") -> dict[str, Any]:
    """Read a detectron2 checkpoint file safely into the dict ``DetectionCheckpointer._load_model`` takes."""
    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            data = load_numpy_pickle(f)
        if "model" in data and "__author__" in data:  # detectron2 model-zoo format
            return data
        data = data.get("blobs", data)  # Caffe2 / Detectron1 format
        return {"model": {k: v for k, v in data.items() if not k.endswith("_momentum")},
                "__author__": "Caffe2", "matching_heuristics": True}
    from teachers.strict_load import safe_torch_load

    data = safe_torch_load(path)
    if not isinstance(data, dict):
        raise TeacherError(f"teacher {teacher!r}: checkpoint {path} holds a {type(data).__name__}, not a state dict")
    return data if "model" in data else {"model": data}


def save_random(out_dir: str, config_file: str, opts: Sequence[str], seed: int) -> str:
    """Save the model of model-zoo config ``config_file`` with ``opts`` and random weights (torch seed ``seed``) as a
    folder: ``config.yaml`` and ``model_final.pth`` (a ``{"model": state_dict}``, as detectron2 saves); same seed,
    same bytes. Returns the folder, a valid ``checkpoint=``."""
    import torch
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(config_file))
    cfg.merge_from_list([*opts, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    torch.manual_seed(seed)
    model = build_model(cfg)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, FOLDER_CONFIG), "w") as f:
        f.write(cfg.dump())
    torch.save({"model": model.state_dict()}, os.path.join(out_dir, FOLDER_WEIGHTS[0]))
    return str(out_dir)


class Detectron2Teacher(Teacher):
    """A detectron2 model (a config and its weights) as a teacher; subclasses set ``name`` and ``spec``, check the
    config is their kind of model (``check_config``) and write ``predict`` with ``batches``.

    Args:
        checkpoint: weights file (``.pth`` / model-zoo ``.pkl``) or URL used with ``config_file``, or a
            folder holding ``config.yaml`` and ``model_final.pth`` (or ``.pkl``), as detectron2 training writes.
        config_file: model-zoo config name or a yaml path (ignored for a checkpoint folder).
        opts: extra config overrides, detectron2 style ("KEY", "VALUE", ...).
        min_size, max_size: the test resize (detectron2's ResizeShortestEdge: shorter side to ``min_size``, longer
            side at most ``max_size``); default the config's INPUT.MIN_SIZE_TEST and MAX_SIZE_TEST (800, 1333).
        device, dtype, batch_size: see ``Teacher``; float16/bfloat16 run under CUDA autocast.
    """

    def __init__(self, *, checkpoint: str, config_file: str, opts: Sequence[str] = (), min_size: int | None = None,
                 max_size: int | None = None, device: str = "cpu", dtype: str = "float32", batch_size: int = 4) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        for name, value in (("min_size", min_size), ("max_size", max_size)):
            if value is not None:
                integer(name, value, 16)
        require("detectron2", self.name, "detectron2")
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.modeling import build_model
        from detectron2.utils.file_io import PathManager

        self.checkpoint = str(self.resolve_checkpoint(checkpoint))
        weights, config, local_config = self._locate(self.checkpoint, str(expand_home(config_file)))
        self.cfg = load_or_fail(self.name, self.checkpoint, lambda: self._config(config, local_config, opts))
        path = load_or_fail(self.name, self.checkpoint, lambda: PathManager.get_local_path(weights))
        state = load_or_fail(self.name, self.checkpoint, lambda: read_weights(path, self.name))
        self.model = build_model(self.cfg).eval()
        incompatible = load_or_fail(self.name, self.checkpoint,
                                    lambda: DetectionCheckpointer(self.model)._load_model(state))
        bad = list(incompatible.missing_keys) + [k for k, *_ in incompatible.incorrect_shapes]
        if bad:
            raise TeacherError(f"teacher {self.name!r}: checkpoint {self.checkpoint!r} does not fit the config "
                               f"({len(bad)} missing or mis-shaped weights, e.g. {bad[0]})")
        self.min_size = int(min_size if min_size is not None else self.cfg.INPUT.MIN_SIZE_TEST)
        self.max_size = int(max_size if max_size is not None else self.cfg.INPUT.MAX_SIZE_TEST)
        if self.max_size < self.min_size:
            raise TeacherError(f"teacher {self.name!r}: max_size {self.max_size} is below min_size {self.min_size}")
        unplaced = self.cfg.clone()  # where it runs changes no output: leave the device out of the fingerprint
        unplaced.defrost()
        unplaced.MODEL.DEVICE = ""
        self._identity = {"weights_sha256": sha256_of_path(path), "min_size": self.min_size, "max_size": self.max_size,
                          "resize": "shortest edge, padded to the backbone's multiple",
                          "config_sha256": hashlib.sha256(unplaced.dump().encode()).hexdigest()}

    def _locate(self, checkpoint: str, config_file: str) -> tuple[str, str, bool]:
        """(weights path or URL, config path or model-zoo name, config is a local file) of a checkpoint argument."""
        if os.path.isdir(checkpoint):
            found = [w for w in FOLDER_WEIGHTS if os.path.isfile(os.path.join(checkpoint, w))]
            if not os.path.isfile(os.path.join(checkpoint, FOLDER_CONFIG)) or len(found) != 1:
                raise TeacherError(f"teacher {self.name!r}: checkpoint folder {checkpoint!r} must hold "
                                   f"{FOLDER_CONFIG} and one of {', '.join(FOLDER_WEIGHTS)}")
            return os.path.join(checkpoint, found[0]), os.path.join(checkpoint, FOLDER_CONFIG), True
        return checkpoint, config_file, os.path.isfile(config_file)

    def _config(self, config: str, local_config: bool, opts: Sequence[str]) -> Any:
        from detectron2 import model_zoo
        from detectron2.config import get_cfg

        import yaml

        cfg = get_cfg()
        path = config if local_config else model_zoo.get_config_file(config)
        try:  # plain data only: detectron2 would fall back to yaml.unsafe_load, which runs python/object tags
            cfg.merge_from_file(path, allow_unsafe=False)
        except yaml.YAMLError as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise TeacherError(f"teacher {self.name!r}: config {path} is not plain YAML data ({first}); a tag that "
                               "builds a Python object is refused") from None
        cfg.merge_from_list(list(opts))
        cfg.MODEL.DEVICE = str(self.device)
        cfg.MODEL.WEIGHTS = ""
        self.check_config(cfg, config)
        cfg.freeze()
        return cfg

    @abstractmethod
    def check_config(self, cfg: Any, config: str) -> None:
        """Raise TeacherError (one line naming ``config``) unless ``cfg`` is the kind of model this teacher runs."""

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """CUDA autocast at the teacher's half dtype; nothing for float32."""
        import torch

        return contextlib.nullcontext() if self.dtype == "float32" else torch.autocast(
            "cuda", dtype=getattr(torch, self.dtype))

    def batches(self, inputs: list[TeacherInput]) -> Iterator[tuple[list[int], Any]]:
        """detectron2's own test input (``DefaultPredictor`` and the model's ``preprocess_image``): each image resized
        by ResizeShortestEdge (PIL, bilinear), in the config's colour order, normalised, padded to the backbone's
        multiple. Yields (indices into ``inputs``, ``ImageList``) per resized shape, so that an image's output does
        not depend on the other images of the call (a padded batch would change the features near the borders)."""
        import numpy as np
        import torch
        from detectron2.data import transforms as T
        from detectron2.structures import ImageList

        m = self.model
        resize = T.ResizeShortestEdge([self.min_size, self.min_size], self.max_size)
        groups: dict[tuple[int, int], list[tuple[int, Any]]] = {}
        for i, inp in enumerate(inputs):
            check_image(inp.image)
            image = np.ascontiguousarray(inp.image[:, :, ::-1] if self.cfg.INPUT.FORMAT == "BGR" else inp.image)
            resized = resize.get_transform(image).apply_image(image)
            groups.setdefault(resized.shape[:2], []).append((i, resized))
        for items in groups.values():
            pixels = [(torch.as_tensor(np.ascontiguousarray(r.transpose(2, 0, 1)), device=m.device).float()
                       - m.pixel_mean) / m.pixel_std for _, r in items]
            yield [i for i, _ in items], ImageList.from_tensors(pixels, m.backbone.size_divisibility,
                                                                padding_constraints=m.backbone.padding_constraints)
