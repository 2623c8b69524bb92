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


def test_a_misspelt_key_names_the_nearest_one():
    with pytest.raises(ValueError, match="did you mean hidden_size"):
        load_run_config(sets=["model.hiden_size=3"])


def test_base_recipes_merge_under_the_file_in_order(tmp_path):
    (tmp_path / "a.yaml").write_text("model: {hidden_size: 64, dropout: 0.1}\ntrain: {lr: 0.01}\n")
    (tmp_path / "b.yaml").write_text("base: a\nmodel: {dropout: 0.2}\n")
    (tmp_path / "c.yaml").write_text("base: [b, cpu]\ntrain: {max_epochs: 7}\n")  # cpu: a shipped recipe
    cfg = load_run_config([tmp_path / "c.yaml"])
    # cpu comes after b, so its model block wins; c's own lines win over both
    assert (cfg.model.hidden_size, cfg.model.dropout, cfg.train.max_epochs) == (128, 0.3, 7)
    assert cfg.train.lr == load_run_config([resolve_recipe("cpu")]).train.lr
    assert load_run_config([tmp_path / "b.yaml"]).model.dropout == 0.2
    (tmp_path / "a.yaml").write_text("base: c\n")
    with pytest.raises(ValueError, match="cycle"):
        load_run_config([tmp_path / "c.yaml"])
    (tmp_path / "d.yaml").write_text("base: nowhere\n")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_run_config([tmp_path / "d.yaml"])


@pytest.mark.parametrize("key", ["model.input_dim", "model.num_classes", "model.functionals_dim",
                                 "model.input_layers"])
def test_derived_keys_are_refused_on_the_command_line_and_ignored_aloud_in_a_file(tmp_path, key, caplog):
    with pytest.raises(ValueError, match=f"{key} is derived"):
        load_run_config(sets=[f"{key}=7"])
    section, name = key.split(".")
    (tmp_path / "r.yaml").write_text(f"{section}: {{{name}: 7, dropout: 0.2}}\n" if section == "model" else "")
    cfg = load_run_config([tmp_path / "r.yaml"])
    assert getattr(cfg.model, name) == getattr(RunConfig().model, name) and cfg.model.dropout == 0.2
    assert f"{key} is derived" in caplog.text


def test_shipped_recipes_hold_no_runtime_settings_and_share_one_model_block():
    from moma.config import RUNTIME_KEYS, read_recipe

    model_blocks = 0
    for name in available_recipes():
        raw = yaml.safe_load(resolve_recipe(name).read_text())
        flat = {f"{s}.{k}" for s, block in read_recipe(resolve_recipe(name)).items() for k in block}
        assert not flat & RUNTIME_KEYS, name
        model_blocks += "hidden_size" in (raw.get("model") or {})
    assert model_blocks == 3  # cpu, paper and demo; every other recipe inherits one of them


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
