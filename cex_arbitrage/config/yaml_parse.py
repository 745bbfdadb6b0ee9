"""PyYAML behind one function, imported only when a config file is read (start-up cost)."""

from __future__ import annotations

from typing import Any

import yaml

from cex_arbitrage.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (YAML would keep the last silently)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"found the key '{key}' twice",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, label: str) -> object:
    """The YAML document in TEXT; a ConfigError naming LABEL, line and column when malformed."""
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        place = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or "malformed"
        context = f" ({exc.context}" if exc.context else ""
        start = exc.context_mark
        if context and start is not None and (mark is None or start.line != mark.line):
            context += f" that starts at line {start.line + 1}"
        context += ")" if context else ""
        raise ConfigError(f"{label}: {place}invalid YAML: {problem}{context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: invalid YAML: {exc}") from None
