"""`touchhub mappings check`: every YAML file in the mappings folder validated at once, as CI would.

Each file goes through the same model the hub loads it with; problems read
``file:line: key: reason``. When every file is valid on its own, the folder
goes through the hub's own start-up checks across files
(`hub.mappings_folder.load_mappings_folder`: required files present, templates the
rules name existing and parsing, identifier types declared), so a clean check
means the hub will start.
The files are the folder's ``*.yaml`` and every mapping sources.yaml names,
wherever in the folder it is and whatever its extension (`shop/orders.yml`).
Sources are built without their secrets (a check must run where the
secrets are not), which still validates connector, config keys and mapping file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from connectors.base import Registry
from hub.config_files import load_model, with_line
from hub.delivery_policy import POLICY_FILE, DeliveryPolicyFile, check_destination_ids
from hub.errors import ConfigError
from hub.identity_config import IDENTITY_FILE, load_identity_config
from hub.mapping import load_mapping
from hub.routes_file import check_route_ends, load_routes
from hub.rules import load_rules
from hub.mappings_folder import load_mappings_folder
from hub.sources import DEFAULT_SOURCE_ID, SOURCES_FILE, build_source, environment, load_entries, shared_write_keys


def check_folder(folder: Path, registry: Registry) -> tuple[list[Path], list[str]]:
    """The files checked and every problem found in them."""
    loaders: dict[str, Callable[[Path], Any]] = {
        "triggers.yaml": load_rules,
        "routes.yaml": load_routes,
        IDENTITY_FILE: load_identity_config,
        POLICY_FILE: lambda path: check_destination_ids(load_model(path, DeliveryPolicyFile), registry.destinations),
        SOURCES_FILE: lambda path: _check_sources(path, registry),
    }
    checks = {path: loaders.get(path.name, load_mapping) for path in folder.glob("*.yaml")}
    for path in _named_mappings(folder) - checks.keys():
        checks[path] = load_mapping
    problems: list[str] = []
    for path, load in sorted(checks.items()):
        try:
            load(path)
        except ConfigError as exc:
            problems.extend(with_line(problem, path) for problem in exc.problems)
    if not problems:  # else the start-up checks would report the same broken files again
        try:
            loaded = load_mappings_folder(folder, registry, _mapping_files(folder, registry))
            check_route_ends(folder / "routes.yaml", loaded.router.routes, registry.destinations, loaded.identity.types)
        except ConfigError as exc:
            problems.extend(exc.problems)
    return sorted(checks), problems


def _mapping_files(folder: Path, registry: Registry) -> dict[str, str]:
    """Source id -> mapping file, as the hub gives them out (`Hub._build_sources`), sources built without secrets."""
    files = {DEFAULT_SOURCE_ID: registry.sources["segment"].default_mapping}
    for where, entry in load_entries(folder):
        source = build_source(registry, entry, where, environment(), folder, need_secrets=False)
        files[entry.id] = entry.mapping or source.default_mapping
    return files


def _named_mappings(folder: Path) -> set[Path]:
    """The existing mapping files sources.yaml names (its own problems, missing files included, are reported
    when sources.yaml is checked)."""
    try:
        entries = load_entries(folder)
    except ConfigError:
        return set()
    return {path for _, entry in entries if entry.mapping and (path := folder / entry.mapping).is_file()}


def _check_sources(path: Path, registry: Registry) -> None:
    problems = []
    located = []
    env = environment()
    for where, entry in load_entries(path.parent):
        try:
            source = build_source(registry, entry, where, env, path.parent, need_secrets=False)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if all(variable in env for variable in entry.secrets.values()):  # unset ones share one placeholder
            located.append((where, source))
        mapping_file = path.parent / (entry.mapping or source.default_mapping)
        if not mapping_file.exists():
            problems.append(f"{where}.mapping: {mapping_file.name} does not exist in {path.parent}")
    problems.extend(shared_write_keys(located))  # where the secrets are set, as at start-up
    if problems:
        raise ConfigError(problems)
