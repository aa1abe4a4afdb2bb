"""The `-p/--set KEY=VALUE` config overrides of generate, batch and plan: one declaration, one
parser (what each command then adds from its own flags wins)."""

from __future__ import annotations

import argparse
from typing import Any


def add_override_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "-p", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=help_text,
    )  # fmt: skip


def cli_overrides(items: list[str]) -> dict[str, Any]:
    """The -p items as dotted keys, a mapping value spread into one key per leaf (so
    `-p model.offload={mode: blocks}` sets that field and keeps the section's others);
    ConfigError for an item without "="."""
    from mtlib.config import parse_overrides

    return _flatten(parse_overrides(list(items)))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
