"""The training recipe: the paper preset checked field by field, recipe files, flags over it, saved with a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from student import cli
from student.augment import AugmentConfig
from student.config import TrainConfig
from student.recipe import PAPER_TERMS, PRESETS, Recipe, dump_recipe, load_recipe

#: The paper's numbers (sections "Model Training", "Data Augmentation" and the loss), and where it is silent the
#: authors' code; every field of the recipe is listed, so a new field must be added here with its source.
PAPER = {
    "epochs": 250, "patience": 65, "batch_size": 32, "lr": 2.4e-4, "lr_final": 1.0e-4, "lr_decay_epochs": 100,
    "heatmap_radius": (23, 8), "paf_width": (6, 2), "size_step_epochs": 20,
    "gain_tokens": 10.0, "gain_joints": 2.4, "gain_pafs": 1.0, "gain_depth": 1.0, "gain_normals": 1.0,
    "gain_text": 1.0, "gain_groups": 2.0,
    "multihot": False, "gain_multihot": 1.0, "pose_foreground_weight": 1.0,
    "token_dropout": 0.2, "token_residual": 0.3, "encoder_dropout": 0.2,
    "augment": True,
    # the authors' code (the paper is silent)
    "early_stop_min_delta": 1e-4, "early_stop_start_epoch": 25, "adam_eps": 1e-7, "clip_value": 1.0,
}
PAPER_AUGMENTATION = {"pan_zoom": 0.45, "zoom_max": 1.1, "min_joints_in_view": 0.3, "color": 0.5, "color_max": 0.2,
                      "noise": 0.15, "burned": 0.5, "burned_max": 10, "noise_image": 0.01}


def test_paper_preset_is_the_paper_field_by_field() -> None:
    recipe = PRESETS["paper"]
    assert recipe == Recipe() == TrainConfig().recipe
    fields = {k: v for k, v in vars(recipe).items() if k != "augmentation"}
    assert set(fields) == set(PAPER), "a recipe field without its paper value in this test"
    for name, value in PAPER.items():
        assert getattr(recipe, name) == value, name
    for name, value in PAPER_AUGMENTATION.items():
        assert getattr(recipe.augmentation, name) == value, name
    assert recipe.gains() == {"tokens": 10.0, "joints": 2.4, "pafs": 1.0, "depth": 1.0, "normals": 1.0,
                              "text": 1.0, "groups": 2.0, "multihot": 1.0}
    assert PAPER_TERMS == ("joints", "pafs", "depth", "normals", "text", "groups", "tokens")


def test_recipe_files_round_trip_and_are_partial(tmp_path: Path) -> None:
    changed = Recipe.from_dict({"lr": 1e-3, "heatmap_radius": [12, 4], "augmentation": {"noise": 0.5}})
    assert changed.heatmap_radius == (12, 4) and changed.augmentation.noise == 0.5
    assert changed.augmentation.pan_zoom == 0.45  # the rest of the augmentation stays the paper's
    for name in ("r.json", "r.yaml"):
        dump_recipe(changed, tmp_path / name)
        assert load_recipe(tmp_path / name) == changed
    (tmp_path / "part.json").write_text('{"multihot": true}')
    assert load_recipe(tmp_path / "part.json") == Recipe(multihot=True)
    assert load_recipe("paper") == Recipe()
    assert json.loads(dump_recipe(Recipe()))["augmentation"]["pan_zoom"] == 0.45


@pytest.mark.parametrize("doc, match", [
    ('{"gain_jionts": 3}', "unknown recipe field"),
    ('{"augmentation": {"zoom": 2}}', "unknown augmentation setting"),
    ('{"lr": -1}', "lr must be a finite number > 0"),
    ('{"heatmap_radius": [4, 8]}', "start >= limit"),
    ('{"token_dropout": 1.5}', "below 1"),
    ('{"epochs": 2.5}', "epochs must be an integer"),
    ('[1, 2]', "must be an object"),
    ('{not json', "not valid JSON"),
])
def test_bad_recipe_files_are_one_line(tmp_path: Path, doc: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(doc)
    with pytest.raises(ValueError, match=match):
        load_recipe(path)


def test_a_yaml_recipe_is_plain_data(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text(f"lr: !!python/object/apply:os.system ['touch {tmp_path / 'ran'}']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_recipe(path)
    assert not (tmp_path / "ran").exists()


def test_print_recipe_shows_file_then_flags_then_settings(tmp_path: Path, capsys) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"lr": 1e-3, "epochs": 40, "gain_joints": 5.0}))
    argv = ["train", "--recipe", str(path), "--epochs", "12", "--multihot", "--no-augment",
            "--set", "augmentation.noise=0.3", "--set", "heatmap_radius=[12,4]", "--print-recipe"]
    assert cli.main(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["lr"] == 1e-3 and shown["gain_joints"] == 5.0  # from the file
    assert shown["epochs"] == 12 and shown["multihot"] is True and shown["augment"] is False  # flags win
    assert shown["augmentation"]["noise"] == 0.3 and shown["heatmap_radius"] == [12, 4]
    assert cli.main(["train", "--print-recipe"]) == 0
    assert Recipe.from_dict(json.loads(capsys.readouterr().out)) == Recipe()


def test_bad_flags_and_settings_are_one_line(tmp_path: Path, capsys) -> None:
    for argv, match in ((["--set", "nope=1"], "unknown recipe field(s) nope"), (["--set", "lr"], "FIELD=VALUE"),
                        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
                        (["--recipe", str(tmp_path / "missing.json")], "neither a preset")):
        assert cli.main(["train", *argv, "--print-recipe"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err


def test_saved_configs_carry_the_recipe_and_old_flat_configs_still_read() -> None:
    cfg = TrainConfig(recipe=Recipe(lr=1e-3, augmentation=AugmentConfig(noise=0.2)))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    old = {"shards": "s", "epochs": 7, "lr": 5e-4, "heatmap_radius": [20, 6], "gain_joints": 3.0, "model": "tiny"}
    read = TrainConfig.from_dict(old)
    assert read.shards == "s" and read.model == "tiny"
    assert (read.recipe.epochs, read.recipe.lr, read.recipe.heatmap_radius, read.recipe.gain_joints) == \
        (7, 5e-4, (20, 6), 3.0)


@pytest.mark.parametrize("change, match", [
    ({"heatmap_radius": [100000, 8]}, "256 >= start >= limit"),
    ({"heatmap_radius": 5}, "must be \\[start, limit\\]"),
    ({"batch_size": 10 ** 7}, "batch_size must be <="),
    ({"multihot": "false"}, "multihot must be true or false"),
    ({"lr": True}, "lr must be a finite number"),
    ({"augmentation": {"burned_max": 10 ** 12}}, "burned_max must be an integer <= 10000"),
    ({"augmentation": {"pan_zoom": "x"}}, "pan_zoom must be a finite number"),
    ({"augmentation": {"color": 2.0}}, "color must be in 0..1"),
])
def test_recipe_values_are_bounded_and_typed(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Recipe.from_dict(change)
