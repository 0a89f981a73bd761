"""Change values in a YAML file's text and keep everything else: comments, key order, quoting, characters.

PyYAML's composer gives every scalar's position in the text; :func:`set_values` replaces just those spans
(and inserts missing keys as new lines at the mapping's indentation), so a profile written by
``scripts/calibrate.py`` keeps its comments. ruamel.yaml would do this too but is not a dependency.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

Path_ = tuple  # a key path: str keys for mappings, int indices for sequences

_PLAIN = re.compile(r"^[A-Za-z_][\w.\-]*$")


def format_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    s = str(value)
    if _PLAIN.match(s) and s.lower() not in ("true", "false", "yes", "no", "on", "off", "null", "none"):
        return s
    return json.dumps(s, ensure_ascii=False)


def _get(mapping: yaml.MappingNode, key: str):
    for k, v in mapping.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    return None


def _line_end(text: str, index: int) -> int:
    """Index of the end of the line holding ``index`` (where a new line can be inserted)."""
    if index > 0 and text[index - 1] == "\n":  # a block node's end mark sits at the next line's start
        return index - 1
    j = text.find("\n", index)
    return len(text) if j < 0 else j


def _last_end(node) -> int:
    """End index of the last scalar inside ``node`` (block nodes end at the next line otherwise)."""
    if isinstance(node, yaml.MappingNode) and node.value and not node.flow_style:
        return _last_end(node.value[-1][1])
    if isinstance(node, yaml.SequenceNode) and node.value and not node.flow_style:
        return _last_end(node.value[-1])
    return node.end_mark.index


def _block(key: str, rest: Path_, value: Any, indent: int) -> str:
    pad = " " * indent
    if not rest:
        return f"{pad}{key}: {format_scalar(value)}"
    if isinstance(rest[0], int):
        raise KeyError(f"cannot create list {key!r}")
    return f"{pad}{key}:\n" + _block(rest[0], rest[1:], value, indent + 2)


def _set_one(text: str, path: Path_, value: Any) -> str:
    root = yaml.compose(text)
    if not isinstance(root, yaml.MappingNode):
        raise ValueError("the YAML document must be a mapping")
    node = root
    for depth, step in enumerate(path):
        if isinstance(step, int):
            if not isinstance(node, yaml.SequenceNode) or step >= len(node.value):
                raise KeyError(f"{path}: no item {step}")
            node = node.value[step]
            continue
        if not isinstance(node, yaml.MappingNode):
            raise KeyError(f"{path}: {step!r} is not under a mapping")
        if node.flow_style:  # {a: 1}: rewrite the whole flow mapping (no comments can sit inside it)
            start, end = node.start_mark.index, node.end_mark.index
            data = yaml.safe_load(text[start:end]) or {}
            cur = data
            for k in path[depth:-1]:
                cur = cur.setdefault(k, {})
            cur[path[-1]] = value
            flow = yaml.safe_dump(data, default_flow_style=True, allow_unicode=True, sort_keys=False, width=10**6)
            return text[:start] + flow.strip() + text[end:]
        child = _get(node, step)
        if child is None:
            rest = path[depth + 1:]
            indent = node.value[0][0].start_mark.column if node.value else 0
            at = _line_end(text, _last_end(node)) if node.value else len(text)
            return text[:at] + "\n" + _block(step, rest, value, indent) + text[at:]
        node = child
    if not isinstance(node, yaml.ScalarNode):
        raise KeyError(f"{path}: not a scalar")
    return text[:node.start_mark.index] + format_scalar(value) + text[node.end_mark.index:]


def set_values(text: str, updates: list[tuple[Path_, Any]]) -> str:
    """Return ``text`` with each ``(path, value)`` set, one after another; missing mapping keys are added
    (as new lines at the mapping's indentation; inside a flow mapping ``{...}`` the mapping is rewritten)."""
    for path, value in updates:
        text = _set_one(text, path, value)
    return text
