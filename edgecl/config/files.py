"""Config files: YAML in, ``extends`` chains merged, ``--set key=value`` overrides applied,
and every problem turned into a one-line :class:`~edgecl.errors.ConfigError`."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edgecl.config.models import RunConfig, format_errors
from edgecl.errors import ConfigError, one_line


# ---- YAML files, `extends` and `--set` overrides ----------------------------------------------
def read_tree(path: Path) -> dict[str, Any]:
    """The YAML mapping at ``path`` with its ``extends`` chain merged in.

    ``extends: other.yaml`` (relative to the extending file) names a base config; the
    extending file's tree is deep-merged over the base's: mappings merge key by key, lists and
    scalars replace. Bases may extend further; a cycle is an error.
    """
    return _resolved(Path(path), ())


def _resolved(path: Path, chain: tuple[tuple[Path, str], ...]) -> dict[str, Any]:
    key = path.resolve()
    if any(seen == key for seen, _ in chain):
        names = " -> ".join([*(shown for _, shown in chain), str(path)])
        raise ConfigError(f"extends cycle: {names}")
    tree = _mapping(_read_text(path), str(path))
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{path}: extends must be the path of a YAML file, got {parent!r}")
    base = path.parent / parent
    if not base.is_file():
        raise ConfigError(f"{path}: extends {parent!r}, but {base} is not a file")
    return deep_merge(_resolved(base, (*chain, (key, str(path)))), tree)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (YAML) file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None


def _mapping(text: str, source: str) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(one_line(f"{source}: not valid YAML: {exc}")) from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{source}: top level must be a mapping (name:, data:, methods: ...), "
            f"got a {type(tree).__name__}")
    return tree


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged onto ``base``: mappings key by key, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        below = out.get(key)
        both = isinstance(value, dict) and isinstance(below, dict)
        out[key] = deep_merge(below, value) if both else value
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"--set expects key=value with a dotted key, got {item!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(one_line(
            f"--set {key.strip()}: value {raw!r} is not valid YAML ({problem})")) from None
    return path, value


def apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = tree
    for i, part in enumerate(path[:-1]):
        node = _child(node, part, path[: i + 1])
        if not isinstance(node, dict | list):
            raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is "
                              f"{node!r}, not a mapping or list")
    last = path[-1]
    if isinstance(node, list):
        node[_list_index(node, last, path)] = value
    else:
        node[last] = value


def _child(node: dict[str, Any] | list[Any], part: str, prefix: list[str]) -> Any:
    """The entry ``part`` of ``node`` (a missing or empty mapping entry becomes ``{}``)."""
    if isinstance(node, list):
        return node[_list_index(node, part, prefix)]
    if node.get(part) is None:
        node[part] = {}
    return node[part]


def _list_index(node: list, part: str, path: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {'.'.join(path)}: {part!r} is not an index below {len(node)}")
    return int(part)


def default_config_text() -> str:
    return resources.files("edgecl").joinpath("configs/default.yaml").read_text()


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """The config at ``path`` (default: the embedded quick comparison), its ``extends`` chain
    merged in, then the ``key=value`` overrides applied; validated, methods included.

    Every problem is a :class:`ConfigError` with a one-line message naming the field."""
    tree = read_tree(Path(path)) if path else _default_tree()
    for item in overrides:
        apply_override(tree, *parse_override(item))
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"invalid config: {format_errors(exc, tree)}") from None


def _default_tree() -> dict[str, Any]:
    with resources.as_file(resources.files("edgecl").joinpath("configs/default.yaml")) as path:
        return read_tree(path)
