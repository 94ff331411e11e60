"""Find and load shipped or user profiles/targets by name or path, with cross-file checks.

Shipped YAML lives at the repo root (`profiles/`, `targets/`) and is packaged as `edgekit/_data/` in a wheel;
an editable install reads the repo folders directly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from edgekit.errors import ConfigError
from edgekit.specs import Profile, Target

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

# Profiles are a few hundred bytes; anything far larger is a mistake or an attack (YAML bombs).
MAX_YAML_BYTES = 256 * 1024


def _data_dirs(kind: str) -> list[Path]:
    here = Path(__file__).resolve().parent
    candidates = [here / "_data" / kind, here.parent / kind]
    return [p for p in candidates if p.is_dir()]


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    class _NoAliasLoader(yaml.SafeLoader):
        # Anchors/aliases are how "billion laughs" YAML bombs expand; profiles never need them.
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise ConfigError(f"{path}: YAML aliases (*name) are not allowed in edgekit files")
            return super().compose_node(parent, index)

    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: file is {size} bytes; edgekit YAML files are limited to {MAX_YAML_BYTES}")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(exc, 'problem', exc)})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def validation_message(source: str, exc: ValidationError) -> str:
    """One line naming the first offending key and value (pydantic's own text is many lines)."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    key = key.replace("schema_", "schema")
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    if err["type"] == "missing":
        return f"{source}: missing key '{key}'"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: key '{key}' = {shown[:80]}: {err['msg']}{more}"


def parse(cls: type[M], data: dict[str, Any], source: str) -> M:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(source, exc)) from exc


def _resolve(kind: str, name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists() or "/" in name_or_path:
        if not candidate.is_file():
            raise ConfigError(f"{kind[:-1]} file not found: {name_or_path}")
        return candidate
    for folder in _data_dirs(kind):
        path = folder / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    known = ", ".join(list_names(kind)) or "none"
    raise ConfigError(f"unknown {kind[:-1]} '{name_or_path}' (shipped: {known}; or pass a path to a YAML file)")


def list_names(kind: str) -> list[str]:
    names: set[str] = set()
    for folder in _data_dirs(kind):
        names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def load_target(name_or_path: str) -> Target:
    path = _resolve("targets", name_or_path)
    target = parse(Target, _load_yaml(path), str(path))
    if path.stem != target.name and path.parent in _data_dirs("targets"):
        raise ConfigError(f"{path}: key 'name' = {target.name!r} must equal the file name {path.stem!r}")
    return target


def load_profile(name_or_path: str) -> Profile:
    """Load a profile and check it against its target: the target exists and supports the default method."""
    path = _resolve("profiles", name_or_path)
    profile = parse(Profile, _load_yaml(path), str(path))
    try:
        target = load_target(profile.target)
    except ConfigError as exc:
        raise ConfigError(f"{path}: key 'target' = {profile.target!r}: {exc.message}") from exc
    check_method(profile.default_method, target, where=f"{path}: key 'default_method'")
    for task, method in profile.default_method_by_task.items():
        check_method(method, target, where=f"{path}: key 'default_method_by_task.{task}'")
    return profile


def profile_target(profile: Profile) -> Target:
    return load_target(profile.target)


def check_method(method: str, target: Target, *, where: str = "method") -> None:
    # Distillation produces a new source; the target only has to support fp32 export of it.
    if method != "distill" and method != "fp32" and method not in target.supports:
        supported = ", ".join(target.supports)
        raise ConfigError(f"{where} = {method!r} is not supported by target '{target.name}' (supported: {supported})")


def all_profiles() -> list[Profile]:
    return [load_profile(n) for n in list_names("profiles")]


def all_targets() -> list[Target]:
    return [load_target(n) for n in list_names("targets")]
