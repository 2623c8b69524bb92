import pytest
import yaml

from moma.config import RunConfig, config_to_dict, load_run_config, save_config
from moma.recipes import available_recipes, resolve_recipe


def test_defaults_are_the_papers():
    cfg = RunConfig()
    assert (cfg.features.n_mels, cfg.features.frame_length_ms, cfg.features.frame_shift_ms) == (23, 25.0, 10.0)
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.context_dim, cfg.model.num_blocks) == (512, 2, 128, 3)
    assert (cfg.train.lr, cfg.train.lr_patience, cfg.train.lr_factor) == (1e-4, 4, 0.1)


def test_yaml_and_set_override_in_order(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("model: {hidden_size: 64}\ntrain: {lr: 0.01}\n")
    cfg = load_run_config([a], ["train.lr=0.5", "data.spec_augment=true", "model.num_blocks=5"])
    assert cfg.model.hidden_size == 64 and cfg.train.lr == 0.5 and cfg.data.spec_augment is True
    assert cfg.model.num_blocks == 5 and cfg.model.context_dim == 128


def test_unknown_and_mistyped_options_are_errors(tmp_path):
    with pytest.raises(ValueError, match="hiden_size"):
        load_run_config(sets=["model.hiden_size=3"])
    with pytest.raises(ValueError, match="integer"):
        load_run_config(sets=["model.hidden_size=abc"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_run_config(sets=["train.seed=7", "data.normalisation=speaker"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_run_config([tmp_path / "c.yaml"])
    assert config_to_dict(again) == config_to_dict(cfg)
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["train"]["seed"] == 7


def test_recipes_load():
    assert {"paper", "cpu", "emodb-cpu", "demo"} <= set(available_recipes())
    for name in available_recipes():
        load_run_config([resolve_recipe(name)])
    with pytest.raises(FileNotFoundError, match="recipes"):
        resolve_recipe("nope")
