"""The training recipe: every knob that changes what a training run learns, in one frozen dataclass whose
defaults are the Y-MAP-Net paper's (the ``paper`` preset); read from and written to JSON or YAML files.

Where the paper states a number it is the default; where it is silent the authors' public Keras code
(FORTH-ICS-CVRL-HCCV/Y-MAP-Net) decides; the project's own additions are off in the ``paper`` preset. The
comment of each field says which of the three it is.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from student.augment import AugmentConfig
from student.targets import TargetSizes

MAX_SIZE = 256  # largest heatmap radius / PAF width, in pixels of a 256-pixel store: blobs are (2r + 3)^2 arrays
MAX_BATCH = 65536  # a batch's buffers are allocated up front

#: the seven terms of the paper's loss (its section "Model Training"), in channel order, tokens last
PAPER_TERMS = ("joints", "pafs", "depth", "normals", "text", "groups", "tokens")


@dataclass(frozen=True)
class Recipe:
    """How the student is trained; ``Recipe()`` is the paper's recipe (``PRESETS["paper"]``)."""

    # optimiser and schedule
    epochs: int = 250  # paper: "up to 250 epochs"
    patience: int = 65  # paper: early stopping patience of 65 epochs
    early_stop_min_delta: float = 1e-4  # authors' code (EarlyStopping min_delta)
    early_stop_start_epoch: int = 25  # authors' code (EarlyStopping start_from_epoch)
    batch_size: int = 32  # paper
    lr: float = 2.4e-4  # paper: Adam, starting at 2.4e-4 ...
    lr_final: float = 1.0e-4  # ... decaying linearly to 1.0e-4 ...
    lr_decay_epochs: int = 100  # ... after 100 epochs
    adam_eps: float = 1e-7  # authors' code: Keras Adam's epsilon (PyTorch's default is 1e-8)
    clip_value: float = 1.0  # authors' code: Adam(clipvalue=1.0), each gradient value clipped; 0 = off
    # target sizes: one step smaller every size_step_epochs epochs, in pixels of a 256-pixel store (paper)
    heatmap_radius: tuple[int, int] = (23, 8)  # joint Gaussian size, start and limit
    paf_width: tuple[int, int] = (6, 2)  # PAF line width, start and limit
    size_step_epochs: int = 20
    # loss: L = sum_i g_i * MSE_i over the seven terms (paper)
    gain_tokens: float = 10.0
    gain_joints: float = 2.4
    gain_pafs: float = 1.0
    gain_depth: float = 1.0
    gain_normals: float = 1.0
    gain_text: float = 1.0
    gain_groups: float = 2.0
    pose_foreground_weight: float = 1.0  # project option: weight of joint / PAF pixels off the background
    # optional multi-hot head (paper: "2 dense layers for some applications"); off in the paper recipe
    multihot: bool = False
    gain_multihot: float = 1.0  # its BCE, on a detached input: it never trains the token branch
    # dropout and the token chain (paper: 20% after each token layer, reduced over the tokens; 30% residual)
    encoder_dropout: float = 0.2  # spatial dropout in each encoder block (authors' code: the same rate)
    token_dropout: float = 0.2  # token i uses token_dropout / (i + 1) (authors' code)
    token_residual: float = 0.3
    # augmentation (paper, section "Data Augmentation")
    augment: bool = True
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise ValueError(problem)

    def problem(self) -> str | None:
        """Why this recipe cannot train (one line), or None."""
        for name, least in (("epochs", 1), ("patience", 1), ("batch_size", 1), ("lr_decay_epochs", 0),
                            ("size_step_epochs", 1), ("early_stop_start_epoch", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                return f"recipe {name} must be an integer, got {value!r}"
            if value < least:
                return f"recipe {name} must be >= {least}, got {value!r}"
        if self.batch_size > MAX_BATCH:
            return f"recipe batch_size must be <= {MAX_BATCH}, got {self.batch_size}"
        for name in ("augment", "multihot"):
            if not isinstance(getattr(self, name), bool):
                return f"recipe {name} must be true or false, got {getattr(self, name)!r}"
        for name in ("lr", "lr_final", "adam_eps"):
            value = getattr(self, name)
            if not (_number(value) and value > 0):
                return f"recipe {name} must be a finite number > 0, got {value!r}"
        numbers = ["early_stop_min_delta", "clip_value", "pose_foreground_weight", "encoder_dropout",
                   "token_dropout", "token_residual"] + [f.name for f in fields(self) if f.name.startswith("gain_")]
        for name in numbers:
            value = getattr(self, name)
            if not (_number(value) and value >= 0):
                return f"recipe {name} must be a finite number >= 0, got {value!r}"
        for name in ("encoder_dropout", "token_dropout"):
            if getattr(self, name) >= 1:
                return f"recipe {name} must be below 1, got {getattr(self, name)}"
        for name in ("heatmap_radius", "paf_width"):
            pair = getattr(self, name)
            if (not isinstance(pair, tuple) or len(pair) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIZE for v in pair)
                    or pair[1] > pair[0]):
                return f"recipe {name} must be [start, limit] with {MAX_SIZE} >= start >= limit >= 1, got {pair!r}"
        if not isinstance(self.augmentation, AugmentConfig):
            return "recipe augmentation must be an object of augmentation settings"
        return _augmentation_problem(self.augmentation)

    def target_sizes(self) -> TargetSizes:
        """The heatmap / PAF size schedule of this recipe."""
        return TargetSizes(self.heatmap_radius, self.paf_width, self.size_step_epochs)

    def gains(self) -> dict[str, float]:
        """Gain of each loss term, the seven of the paper and ``multihot``."""
        return {name: getattr(self, f"gain_{name}") for name in PAPER_TERMS + ("multihot",)}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: "Recipe | None" = None) -> "Recipe":
        """``base`` (default the paper recipe) with the fields of ``d`` replaced; unknown keys are a ValueError.

        ``augmentation`` may be partial: its missing keys keep ``base``'s values.
        """
        base = base or cls()
        if not isinstance(d, dict):
            raise ValueError(f"a recipe must be an object of fields, not {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown recipe field(s) {', '.join(unknown)}; see `student train --print-recipe`")
        values: dict[str, Any] = {}
        for key, value in d.items():
            if key == "augmentation":
                if not isinstance(value, dict):
                    raise ValueError("recipe augmentation must be an object of augmentation settings")
                known = {f.name for f in fields(AugmentConfig)}
                bad = sorted(set(value) - known)
                if bad:
                    raise ValueError(f"unknown augmentation setting(s) {', '.join(bad)}; "
                                     f"known: {', '.join(sorted(known))}")
                value = replace(base.augmentation, **value)
            elif isinstance(value, list):
                value = tuple(value)
            values[key] = value
        return replace(base, **values)

    def with_setting(self, assignment: str) -> "Recipe":
        """This recipe with one ``FIELD=VALUE`` (``augmentation.FIELD=VALUE`` for augmentation); the value is
        read as JSON (``true``, ``0.5``, ``[23, 8]``), else taken as a string."""
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {assignment!r}: expected FIELD=VALUE")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if key.startswith("augmentation."):
            return self.from_dict({"augmentation": {key.split(".", 1)[1]: value}}, self)
        return self.from_dict({key: value}, self)


def _number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _augmentation_problem(a: AugmentConfig) -> str | None:
    """Why these augmentation settings cannot train (a chance outside [0, 1], a count past its bound), or None."""
    for f in fields(a):
        value = getattr(a, f.name)
        if not _number(value) or value < 0:
            return f"recipe augmentation.{f.name} must be a finite number >= 0, got {value!r}"
    for name in ("pan_zoom", "color", "noise", "burned", "noise_image", "min_joints_in_view", "color_max", "pan_max"):
        if getattr(a, name) > 1:
            return f"recipe augmentation.{name} must be in 0..1, got {getattr(a, name)}"
    for name, most, whole in (("burned_max", 10_000, True), ("pan_zoom_tries", 1_000, True), ("zoom_max", 10, False),
                              ("noise_sigma_max", 255, False)):
        value = getattr(a, name)
        if value > most or (whole and not isinstance(value, int)):
            return f"recipe augmentation.{name} must be {'an integer ' if whole else ''}<= {most}, got {value!r}"
    if a.zoom_max < 1:
        return f"recipe augmentation.zoom_max must be >= 1, got {a.zoom_max}"
    return None


#: named recipes; ``paper`` is the default of ``student train``
PRESETS: dict[str, Recipe] = {"paper": Recipe()}


def load_recipe(source: str | os.PathLike) -> Recipe:
    """A preset name (``paper``) or a JSON / YAML file of recipe fields over the paper recipe.

    Raises:
        ValueError: an unknown preset, a missing or malformed file, unknown fields or values that cannot train.
    """
    if str(source) in PRESETS:
        return PRESETS[str(source)]
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"--recipe {source}: neither a preset ({', '.join(PRESETS)}) nor a file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(text)  # plain data only: a tag that builds an object is an error
        else:
            doc = json.loads(text)
    except Exception as e:  # noqa: BLE001 -- json and yaml raise their own types; one line names the file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"--recipe {path}: not valid {path.suffix.lstrip('.').upper() or 'JSON'} ({first})") from None
    try:
        return Recipe.from_dict(doc if doc is not None else {})
    except (TypeError, ValueError) as e:
        raise ValueError(f"--recipe {path}: {e}") from None


def dump_recipe(recipe: Recipe, path: str | os.PathLike | None = None) -> str:
    """The recipe as JSON text (``--print-recipe``); written to ``path`` too when given (YAML for .yaml/.yml)."""
    text = json.dumps(recipe.to_dict(), indent=1)
    if path is not None:
        p = Path(path)
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            p.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        else:
            p.write_text(text + "\n")
    return text
