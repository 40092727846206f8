"""Typed configs: dataclasses loaded from YAML with strict keys and dotted ``--set a.b=c`` overrides.

Every stage defines its own ``@dataclass`` config (nested dataclasses allowed). ``load_config`` builds it
from an optional YAML file plus overrides; an unknown key is an error that lists the valid keys.

An override's value is read according to the type of the field it targets: a ``str`` field keeps the raw text
verbatim (``train.output_dir=/data/exp #3/run``); a list takes YAML flow syntax (``[a, b]``) or is a single item
(a path containing ``, `` is never split); booleans, numbers and ``null`` are parsed as YAML. Code builds stage
configs as typed objects (``dataclasses.replace``); ``with_overrides`` applies a user's ``--set`` strings to one.
``write_run_info`` records the resolved config, seed, git hash and package versions in a run directory.

Values are checked in one place. A field's limits sit next to it, in its metadata::

    max_steps: int = field(default=1000, metadata={"min": 1})
    dropout: float = field(default=0.1, metadata=PROBABILITY)          # {"min": 0.0, "max": 1.0}
    train_manifests: list[str] = field(default_factory=list, metadata={"input": "file"})

``min`` / ``max`` are inclusive, ``gt`` / ``lt`` exclusive, ``choices`` a set of allowed values (a list or tuple
is checked item by item). ``from_dict`` (so every YAML file and ``--set`` override) applies them
(``check_values``); ``input`` marks paths that must exist when the stage starts (``check_inputs``: ``file``,
``dir`` or ``any``), checked by the stage, since a pipeline may declare a path before an earlier step writes it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import subprocess
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dcase.env import package_versions
from dcase.errors import DcaseError, InputError, MissingInputError
from dcase.io import atomic_write_text

log = logging.getLogger(__name__)

PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"  # stage configs, profiles, recipes (package data)

T = TypeVar("T")


class ConfigError(InputError):
    """A config file or override does not match the config dataclass."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming ``where``."""
    if tp is Any:
        return value
    base, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: null is not allowed (expected {getattr(base, '__name__', base)})")
    if isinstance(base, type) and dataclasses.is_dataclass(base):
        if isinstance(value, base):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {base.__name__}, got {value!r}")
        return from_dict(base, value, prefix=where)
    origin = typing.get_origin(base)
    if origin in (list, tuple, Iterable) or base in (list, tuple):
        return _coerce_sequence(value, base, origin is tuple or base is tuple, where)
    if origin is dict or base is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        allowed = typing.get_args(base)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    return _coerce_scalar(value, base, where)


def _coerce_sequence(value: Any, tp: Any, as_tuple: bool, where: str) -> list[Any] | tuple[Any, ...]:
    """A list (or tuple) field: a YAML list, or one string as a one-item list (never split on ",")."""
    if isinstance(value, str):
        value = [value] if value != "" else []
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    args = typing.get_args(tp)
    item_tp = args[0] if args else Any
    items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if as_tuple else items


def _coerce_scalar(value: Any, base: Any, where: str) -> Any:
    """A bool, int, float or str field (other types pass unchanged)."""
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
        raise ConfigError(f"{where}: expected a boolean, got {value!r}")
    if base is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if base is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if base is str:
        return str(value)
    return value


PROBABILITY: Mapping[str, float] = types.MappingProxyType({"min": 0.0, "max": 1.0})


def _check_field(value: Any, limits: Mapping[str, Any], where: str) -> None:
    items = value if isinstance(value, list | tuple) else [value]
    for x in items:
        if x is None:
            continue
        if "choices" in limits and x not in limits["choices"]:
            raise ConfigError(f"{where}: {x!r} is not one of {sorted(limits['choices'])}")
        if not isinstance(x, int | float) or isinstance(x, bool):
            continue
        if "min" in limits and x < limits["min"]:
            raise ConfigError(f"{where}: {x!r} is below the minimum {limits['min']!r}")
        if "max" in limits and x > limits["max"]:
            raise ConfigError(f"{where}: {x!r} is above the maximum {limits['max']!r}")
        if "gt" in limits and not x > limits["gt"]:
            raise ConfigError(f"{where}: {x!r} must be greater than {limits['gt']!r}")
        if "lt" in limits and not x < limits["lt"]:
            raise ConfigError(f"{where}: {x!r} must be less than {limits['lt']!r}")


def check_values(cfg: Any, prefix: str = "", recursive: bool = True) -> None:
    """Check the limits in the field metadata of dataclass config ``cfg`` (and its nested configs); the first
    value out of range is a ConfigError naming its dotted key."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        where = f"{prefix}.{f.name}" if prefix else f.name
        if recursive and dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_values(value, where)
        elif f.metadata:
            _check_field(value, f.metadata, where)


def check_inputs(cfg: Any, prefix: str = "") -> None:
    """Every non-empty path of a field marked ``metadata={"input": "file" | "dir" | "any"}`` (recursively) must
    exist as that kind; otherwise a MissingInputError naming the key and the path."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        where = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_inputs(value, where)
            continue
        kind = f.metadata.get("input") if f.metadata else None
        if kind is None or value is None:
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is None or str(item) == "":
                continue
            path = Path(str(item)).expanduser()
            ok = path.is_file() if kind == "file" else path.is_dir() if kind == "dir" else path.exists()
            if not ok:
                what = {"file": "a file", "dir": "a folder"}.get(kind, "a file or folder")
                state = "does not exist" if not path.exists() else f"is not {what}"
                raise MissingInputError(f"{where}: {path} {state} (an input: {what} is expected here)")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping. Unknown keys raise ConfigError listing the valid keys; values
    outside their field's limits raise ConfigError naming the key (module docstring)."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        where = f" in '{prefix}'" if prefix else ""
        raise ConfigError(f"unknown config key(s) {unknown}{where} of {cls.__name__}; valid keys: {sorted(types_)}")
    kwargs = {k: _coerce(v, types_[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, DcaseError):
            raise
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from e
    check_values(obj, prefix, recursive=False)  # nested configs were checked by their own from_dict
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-serialisable dict of a (nested) dataclass config."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def _type_at(cls: type | None, path: Sequence[str]) -> Any:
    """The annotated type of the field at ``path`` inside dataclass ``cls``; None when unknown."""
    tp: Any = cls
    for part in path:
        base, _ = _strip_optional(tp)
        if not (isinstance(base, type) and dataclasses.is_dataclass(base)):
            return None
        types_ = _field_types(base)
        if part not in types_:
            return None
        tp = types_[part]
    return tp


def _yaml_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        return raw


def _raw_value(raw: str, tp: Any) -> Any:
    """The override text ``raw`` read for a field of type ``tp`` (see the module docstring)."""
    base, optional = _strip_optional(tp)
    if optional and raw.strip() in {"null", "Null", "NULL", "~"}:
        return None
    origin = typing.get_origin(base)
    if base is str or (origin is typing.Literal and all(isinstance(a, str) for a in typing.get_args(base))):
        return raw
    if origin in (list, tuple) or base in (list, tuple):
        if raw.strip().startswith("["):
            return _yaml_value(raw)
        if raw.strip() == "":
            return []
        args = [a for a in typing.get_args(base) if a is not Ellipsis]
        return [_raw_value(raw, args[0] if args else Any)]
    return _yaml_value(raw)


def parse_override(text: str, cls: type | None = None) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3). With the config class ``cls`` the value is read for the type of the field it
    targets (module docstring); without it (or for an unknown key) it is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    path = key.split(".")
    tp = _type_at(cls, path) if cls is not None else None
    return path, (_raw_value(raw, tp) if tp is not None else _yaml_value(raw))


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], cls: type | None = None) -> dict[str, Any]:
    """Apply dotted overrides to a nested dict (in place, returned for chaining); ``cls`` types their values."""
    for text in overrides:
        path, value = parse_override(text, cls)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def with_overrides(cfg: T, overrides: Iterable[str]) -> T:
    """``cfg`` (a dataclass config) with dotted ``--set`` overrides applied; unknown keys are ConfigErrors."""
    overrides = list(overrides)
    if not overrides:
        return cfg
    cls = type(cfg)
    return from_dict(cls, apply_overrides(to_dict(cfg), overrides, cls))


def resolve_config_path(name: str | Path) -> Path:
    """A stage config or recipe: an existing path, else a file under the package's ``configs/`` folder
    (``dcase2024/captioner_pretrain.yaml`` and ``configs/dcase2024/captioner_pretrain.yaml`` both work), so
    ``--config`` works from any directory, not only inside a checkout."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    rel = Path(*path.parts[1:]) if path.parts and path.parts[0] == "configs" else path
    for cand in (PACKAGE_CONFIGS / rel, PACKAGE_CONFIGS / rel.with_suffix(".yaml")):
        if not path.is_absolute() and cand.is_file():
            return cand
    raise ConfigError(f"config file not found: {name} (looked in the current directory and in {PACKAGE_CONFIGS})")


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config file as a dict, with its ``_base_`` chain merged in (the file's own keys win).

    A missing file, invalid YAML or UTF-8, a non-mapping top level and a ``_base_`` cycle are ConfigErrors naming
    the file. A relative path that does not exist is looked up in the package's ``configs/`` folder
    (``resolve_config_path``), so configs work from any directory."""
    path = Path(path)
    if not _chain and not path.is_file() and not path.is_absolute():
        path = resolve_config_path(path)
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"{path}: _base_ cycle ({cycle}); a config cannot be its own base")
    if not path.is_file():
        where = f" (the _base_ of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file not found: {path}{where}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 (byte offset {e.start}); re-save it as UTF-8") from e
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is not None:
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"{path}: _base_ must be the path of another YAML file, got {base!r}")
        parent = load_yaml((path.parent / base).resolve(), (*_chain, path.resolve()))
        data = deep_merge(parent, data)
    return data


def deep_merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """``b`` laid over ``a``, mappings merged key by key (``b`` wins elsewhere). A new dict: neither input is
    modified, and the result shares no mutable value with them (both are deep-copied)."""
    out = copy.deepcopy(dict(a))
    for k, v in b.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
        )
    return out


def jsonable(obj: Any) -> Any:
    """A JSON-able copy of a (dataclass) config or plain data (anything else as its ``str``): what done records,
    settings and meta YAMLs store."""
    return json.loads(json.dumps(to_dict(obj) if dataclasses.is_dataclass(obj) else obj, default=str))


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Load ``cls`` from defaults < YAML file (``_base_: other.yaml`` allowed) < dotted overrides."""
    data = to_dict(cls()) if path is None else deep_merge(to_dict(cls()), load_yaml(path))
    apply_overrides(data, overrides, cls)
    return from_dict(cls, data)


def git_hash(cwd: str | Path | None = None) -> str | None:
    """The current commit of the checkout containing this package (``+dirty`` if modified), or None."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_info(
    run_dir: str | Path, config: Any, seed: int | None = None, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``config.yaml`` (resolved config) and ``run.json`` (seed, git hash, versions) into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = to_dict(config) if dataclasses.is_dataclass(config) else dict(config)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    info = {
        "seed": seed,
        "git_hash": git_hash(),
        "versions": package_versions(),
        "config_class": type(config).__name__ if dataclasses.is_dataclass(config) else None,
        **(dict(extra) if extra else {}),
    }
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2))
    return run_dir
