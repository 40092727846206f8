"""dcase.config: strict keys, nesting, type coercion, _base_ inheritance, dotted overrides, run info."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from dcase.config import ConfigError, from_dict, load_config, parse_override, to_dict, write_run_info


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 0


@dataclass
class Model:
    d_model: int = 64
    n_layers: int = 2
    kind: Literal["bart", "t5"] = "bart"
    dropout: float | None = None


@dataclass
class Cfg:
    name: str = "run"
    seed: int = 0
    use_mcm: bool = True
    splits: list[str] = field(default_factory=lambda: ["development"])
    model: Model = field(default_factory=Model)
    optim: Optim = field(default_factory=Optim)


def test_defaults_and_roundtrip() -> None:
    cfg = load_config(Cfg)
    assert cfg == Cfg()
    d = to_dict(cfg)
    assert d["model"] == {"d_model": 64, "n_layers": 2, "kind": "bart", "dropout": None}
    assert d["optim"]["betas"] == [0.9, 0.999]
    assert from_dict(Cfg, d) == cfg


def test_unknown_keys_list_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, overrides=["modle.d_model=3"])
    assert "['modle']" in str(e.value) and "valid keys: ['model', 'name', 'optim', 'seed', 'splits', 'use_mcm']" in str(
        e.value
    )
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, overrides=["model.hidden=3"])
    msg = str(e.value)
    assert "['hidden']" in msg and "in 'model'" in msg and "['d_model', 'dropout', 'kind', 'n_layers']" in msg
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 0.1\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match=r"\['momentum'\] in 'optim' of Optim"):
        load_config(Cfg, p)


def test_types_and_overrides() -> None:
    cfg = load_config(
        Cfg,
        overrides=[
            "model.d_model=128",
            "optim.lr=5e-4",
            "use_mcm=false",
            "splits=[development, validation]",
            "optim.betas=[0.8, 0.99]",
            "model.kind=t5",
            "model.dropout=0.1",
            "name=12",
        ],
    )
    assert cfg.model.d_model == 128 and isinstance(cfg.model.d_model, int)
    assert cfg.optim.lr == 5e-4 and cfg.use_mcm is False
    assert cfg.splits == ["development", "validation"] and cfg.optim.betas == (0.8, 0.99)
    assert cfg.model.kind == "t5" and cfg.model.dropout == 0.1 and cfg.name == "12"
    assert load_config(Cfg, overrides=["splits=a,b"]).splits == ["a,b"]  # one item: a plain value is never split
    assert load_config(Cfg, overrides=["model.dropout=null"]).model.dropout is None
    for bad, pattern in [
        ("model.d_model=1.5", r"model.d_model: expected an integer, got 1.5"),
        ("model.d_model=abc", r"model.d_model: expected an integer"),
        ("use_mcm=maybe", r"use_mcm: expected a boolean"),
        ("model.kind=gpt", r"model.kind: 'gpt' is not one of \['bart', 't5'\]"),
        ("optim.lr=fast", r"optim.lr: expected a number"),
        ("seed=null", r"seed: null is not allowed"),
        ("model=3", r"model: expected a mapping for Model"),
        ("model.d_model", r"must look like key.path=value"),
        ("name.x=1", r"'name' is not a section"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            load_config(Cfg, overrides=[bad])
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


def test_base_inheritance_and_precedence(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("seed: 3\nmodel:\n  d_model: 32\n  n_layers: 4\noptim:\n  lr: 0.01\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "child.yaml").write_text("_base_: ../base.yaml\nmodel:\n  n_layers: 1\nname: child\n")
    cfg = load_config(Cfg, sub / "child.yaml", overrides=["optim.lr=0.5"])
    assert cfg.seed == 3 and cfg.model.d_model == 32 and cfg.model.n_layers == 1 and cfg.name == "child"
    assert cfg.optim.lr == 0.5 and cfg.optim.warmup == 0  # untouched defaults survive the deep merge
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Cfg, tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Cfg, tmp_path / "broken.yaml")


def test_write_run_info(tmp_path: Path) -> None:
    cfg = load_config(Cfg, overrides=["model.d_model=16"])
    run = write_run_info(tmp_path / "run", cfg, seed=11, extra={"stage": "test"})
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved == to_dict(cfg) and saved["model"]["d_model"] == 16
    assert load_config(Cfg, run / "config.yaml") == cfg  # the saved config reloads to the same object
    info = json.loads((run / "run.json").read_text())
    assert info["seed"] == 11 and info["stage"] == "test" and info["config_class"] == "Cfg"
    assert "git_hash" in info and info["versions"]["python"]
    assert info["versions"]["numpy"] and info["versions"]["pandas"]
    assert not list(run.glob("*.tmp"))


@dataclass
class Paths:
    output_dir: str = "runs/x"
    manifests: list[str] = field(default_factory=list)
    init: str | None = "ckpt"
    shape: tuple[int, int] = (1, 2)
    model: Model = field(default_factory=Model)


def test_override_values_follow_the_field_type() -> None:
    # a str field keeps the raw text verbatim: no YAML comment, no number, no null
    assert load_config(Paths, overrides=["output_dir=/data/exp #3/run"]).output_dir == "/data/exp #3/run"
    assert load_config(Paths, overrides=["output_dir=12"]).output_dir == "12"
    assert load_config(Paths, overrides=["output_dir= spaced "]).output_dir == " spaced "
    assert load_config(Paths, overrides=["output_dir=null"]).output_dir == "null"
    # optional str: null is None, anything else verbatim
    assert load_config(Paths, overrides=["init=null"]).init is None
    assert load_config(Paths, overrides=["init=a: b #c"]).init == "a: b #c"
    # lists: YAML flow syntax, or one item (a path with ", " survives)
    assert load_config(Paths, overrides=["manifests=/data/a, b.parquet"]).manifests == ["/data/a, b.parquet"]
    assert load_config(Paths, overrides=["manifests=[a.parquet, 'b, c.parquet']"]).manifests == [
        "a.parquet",
        "b, c.parquet",
    ]
    assert load_config(Paths, overrides=["manifests=/x #1.parquet"]).manifests == ["/x #1.parquet"]
    assert load_config(Paths, overrides=["manifests="]).manifests == []
    assert load_config(Paths, overrides=["shape=[3, 4]"]).shape == (3, 4)
    # bools, ints, floats, None parse as before, nested
    cfg = load_config(Paths, overrides=["model.d_model=8", "model.dropout=0.5", "model.dropout=null"])
    assert cfg.model.d_model == 8 and cfg.model.dropout is None
    with pytest.raises(ConfigError, match=r"\['outptu_dir'\].*valid keys: \['init', 'manifests'"):
        load_config(Paths, overrides=["outptu_dir=/x"])
    assert parse_override("output_dir=/a #b", Paths) == (["output_dir"], "/a #b")
    assert parse_override("output_dir=/a #b") == (["output_dir"], "/a")  # without the class: plain YAML


def test_with_overrides_applies_user_strings_to_a_typed_config() -> None:
    from dcase.config import with_overrides

    cfg = Paths(output_dir="/runs/a, b #1")
    assert with_overrides(cfg, []) is cfg
    out = with_overrides(cfg, ["model.n_layers=5", "manifests=[m.parquet]"])
    assert out.output_dir == "/runs/a, b #1" and out.model.n_layers == 5 and out.manifests == ["m.parquet"]
    assert cfg.model.n_layers == 2  # the input is not modified
    with pytest.raises(ConfigError, match="valid keys"):
        with_overrides(cfg, ["nope=1"])


def test_configs_are_package_data_found_from_any_directory(tmp_path, monkeypatch):
    """`--config configs/dcase2024/...` and `--config dcase2024/...` work outside a checkout: a relative path that
    does not exist is looked up in the package's configs/ folder."""
    from dcase.config import PACKAGE_CONFIGS, ConfigError, load_config, resolve_config_path
    from dcase.stages.captioner import CaptionerStageConfig

    monkeypatch.chdir(tmp_path)
    want = PACKAGE_CONFIGS / "dcase2024" / "captioner_finetune.yaml"
    assert resolve_config_path("configs/dcase2024/captioner_finetune.yaml") == want
    assert resolve_config_path("dcase2024/captioner_finetune") == want
    cfg = load_config(CaptionerStageConfig, "configs/dcase2024/captioner_finetune.yaml")
    assert cfg.mcm is False and cfg.train.lr == 1.25e-5  # its _base_ (the pretraining file) is merged too
    (tmp_path / "dcase2024").mkdir()
    (tmp_path / "dcase2024" / "captioner_finetune.yaml").write_text("mcm: true\n")
    assert load_config(CaptionerStageConfig, "dcase2024/captioner_finetune.yaml").mcm is True  # a local file wins
    with pytest.raises(ConfigError, match="looked in the current directory and in"):
        load_config(CaptionerStageConfig, "dcase2024/nothing.yaml")
