import pytest
import yaml

from moma.config import (
    REMOVED_AFTER,
    REMOVED_OPTIONS,
    RunConfig,
    config_from_dict,
    config_to_dict,
    load_run_config,
    save_config,
)
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


def _other_value(off):
    return {float: 0.3, int: 2, str: "white"}[type(off)]


@pytest.mark.parametrize("name", sorted(n for n in REMOVED_OPTIONS if "=" not in n))
def test_a_removed_option_loads_at_its_off_value_and_is_refused_at_any_other(name, tmp_path, caplog):
    """Committed reports and bundled checkpoints hold every removed option at its off value: they still load.
    A config that set one cannot be run any more, and says so in one line."""
    off, why = REMOVED_OPTIONS[name]
    section, key = name.split(".")
    saved = config_to_dict(RunConfig())
    saved[section][key] = off
    with caplog.at_level("DEBUG", logger="moma.config"):
        assert config_to_dict(config_from_dict(RunConfig, saved)) == config_to_dict(RunConfig())
    assert name in caplog.text
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({section: {key: off}}))
    assert config_to_dict(load_run_config([tmp_path / "old.yaml"])) == config_to_dict(RunConfig())
    with pytest.raises(ValueError) as refused:
        load_run_config(sets=[f"{name}={_other_value(off)}"])
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{name}=")
    assert f"removed after moma {REMOVED_AFTER}" in message and why in message
    saved[section][key] = _other_value(off)
    with pytest.raises(ValueError, match="removed after moma"):
        config_from_dict(RunConfig, saved)


@pytest.mark.parametrize("entry", sorted(n for n in REMOVED_OPTIONS if "=" in n))
def test_a_removed_value_of_a_kept_option_is_refused_in_one_line(entry):
    why = REMOVED_OPTIONS[entry][1]
    name, value = entry.split("=")
    with pytest.raises(ValueError) as refused:
        load_run_config(sets=[entry])
    message = str(refused.value)
    assert "\n" not in message and message.startswith(entry) and why in message
    assert f"removed after moma {REMOVED_AFTER}" in message
    section, key = name.split(".")
    saved = config_to_dict(RunConfig())
    saved[section][key] = value
    with pytest.raises(ValueError, match="removed after moma"):
        config_from_dict(RunConfig, saved)
