"""Config validation: unknown keys, wrong types and bad values give one-line errors naming the key."""

import json

import pytest

from difflab.config import ExperimentCfg, config_from_dict, load_config_file, parse_override
from difflab.errors import ConfigError


def test_defaults_round_trip_through_json(tmp_path):
    cfg = ExperimentCfg()
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert load_config_file(path) == cfg


def test_toml_merges_over_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nsteps = 50\nlr = 1e-3\n[model]\nbackbone = "mlp"\nparams = {hidden = 64}\n')
    cfg = load_config_file(path)
    assert cfg.train.steps == 50 and cfg.train.lr == 1e-3 and cfg.train.batch_size == ExperimentCfg().train.batch_size
    assert cfg.model.backbone == "mlp" and cfg.model.params == {"hidden": 64}


@pytest.mark.parametrize(
    "data, key",
    [
        ({"train": {"stepz": 5}}, "train.stepz"),
        ({"trian": {}}, "trian"),
        ({"train": {"steps": "many"}}, "train.steps"),
        ({"train": {"steps": 1.5}}, "train.steps"),
        ({"train": {"steps": True}}, "train.steps"),
        ({"train": {"steps": 0}}, "train.steps"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"train": {"ema_decay": 1.5}}, "train.ema_decay"),
        ({"loss": {"weighting": "snr"}}, "loss.weighting"),
        ({"model": {"class_conditional": "yes"}}, "model.class_conditional"),
        ({"model": {"params": [1, 2]}}, "model.params"),
        ({"train": 3}, "train"),
    ],
)
def test_bad_values_name_the_key(data, key):
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    msg = str(e.value)
    assert f"config.{key}" in msg and "\n" not in msg


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        load_config_file(bad)
    pickle_like = tmp_path / "cfg.pkl"
    pickle_like.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ConfigError, match="json or .toml"):
        load_config_file(pickle_like)
    with pytest.raises(ConfigError, match="missing.toml"):
        load_config_file(tmp_path / "missing.toml")
    typed = tmp_path / "typed.toml"
    typed.write_text("[train]\nbatch_size = -4\n")
    with pytest.raises(ConfigError, match=r"typed.toml: config.train.batch_size: must be in \[1, 1048576\], got -4"):
        load_config_file(typed)


def test_parse_override():
    assert parse_override("train.lr=1e-3") == {"train": {"lr": 1e-3}}
    assert parse_override("model.backbone=dit") == {"model": {"backbone": "dit"}}
    assert parse_override('model.params={"hidden": 32}') == {"model": {"params": {"hidden": 32}}}
    with pytest.raises(ConfigError):
        parse_override("lr")
