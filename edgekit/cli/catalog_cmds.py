"""`edgekit profiles list|show` and `edgekit targets list|show`."""

from __future__ import annotations

import click

from edgekit.cli.options import common_options, echo, emit_json, table


@click.group()
def profiles() -> None:
    """Device budget profiles: what must hold on a device."""


@profiles.command("list")
@common_options
def profiles_list(as_json: bool) -> None:
    """List the shipped profiles."""
    from edgekit.catalog import all_profiles

    items = all_profiles()
    if as_json:
        emit_json([p.model_dump(mode="json", by_alias=True) for p in items])
        return
    rows = [
        (p.name, p.target, p.default_method, p.budgets.model_size_mb, p.budgets.decode_tokens_per_s_min, p.description)
        for p in items
    ]
    echo(table(rows, ["name", "target", "method", "size MB", "decode tok/s", "description"]))


@profiles.command("show")
@click.argument("name")
@common_options
def profiles_show(name: str, as_json: bool) -> None:
    """Show one profile (a shipped name or a path to YAML)."""
    from edgekit.catalog import load_profile

    profile = load_profile(name)
    data = profile.model_dump(mode="json", by_alias=True)
    if as_json:
        emit_json(data)
        return
    _show(data)


@click.group()
def targets() -> None:
    """Compile targets: how to build for a runtime and ISA."""


@targets.command("list")
@common_options
def targets_list(as_json: bool) -> None:
    """List the shipped targets."""
    from edgekit.catalog import all_targets

    items = all_targets()
    if as_json:
        emit_json([t.model_dump(mode="json", by_alias=True) for t in items])
        return
    rows = [(t.name, t.device, t.arch, ",".join(t.execution_providers), " ".join(t.supports)) for t in items]
    echo(table(rows, ["name", "device", "arch", "providers", "methods"]))


@targets.command("show")
@click.argument("name")
@common_options
def targets_show(name: str, as_json: bool) -> None:
    """Show one target (a shipped name or a path to YAML)."""
    from edgekit.catalog import load_target

    data = load_target(name).model_dump(mode="json", by_alias=True)
    if as_json:
        emit_json(data)
        return
    _show(data)


def _show(data: dict[str, object], indent: int = 0) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            echo(" " * indent + f"{key}:")
            _show(value, indent + 2)
        else:
            shown = " ".join(map(str, value)) if isinstance(value, list | tuple) else value
            echo(" " * indent + f"{key}: {shown}")
