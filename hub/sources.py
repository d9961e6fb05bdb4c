"""The sources ops configure in ``mappings/sources.yaml``: which connector, which secrets, which mapping.

Secrets are never YAML values: an entry names the environment variable that
holds each one (``secrets: {client_secret: HUB_SRC_CRM_SECRET}``), so the file
can be committed and reviewed. A value typed as a secret in the connector's
config model but written under ``config:`` is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from connectors.base import Registry, Source
from hub.config_files import line_of, load_model, yaml_tree
from hub.errors import ConfigError

SOURCES_FILE = "sources.yaml"
DEFAULT_SOURCE_ID = "default"  # the built-in Segment source of HUB_DEFAULT_WRITE_KEY; no entry may take it
SOURCE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
# Stands in for a secret where none is needed (previews, checks): base64 text, so every connector's
# secret validation accepts it.
PLACEHOLDER_SECRET = "cHJldmlldy1wbGFjZWhvbGRlcg=="


class SourceEntry(BaseModel):
    """One configured source: an id senders use in the webhook URL, and the connector behind it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Lower-case id used in POST /v1/webhooks/{id}; letters, digits, _ and -.")
    connector: str = Field(description="Slug of an installed source connector (see `touchhub connectors list`).")
    mapping: str | None = Field(None, description="Mapping file in mappings/ (default: the connector's own).")
    secrets: dict[str, str] = Field(
        default_factory=dict, description="Config key -> name of the environment variable holding the secret."
    )
    config: dict[str, Any] = Field(default_factory=dict, description="Non-secret settings of the connector.")

    @field_validator("id")
    @classmethod
    def _id_is_a_slug(cls, value: str) -> str:
        if not SOURCE_ID.match(value):
            raise ValueError(f"{value!r} must be lower-case letters, digits, _ or -, at most 63 characters")
        return value

    @field_validator("secrets")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key, name in value.items():
            if not ENV_NAME.match(name):
                raise ValueError(f"{key}: {name!r} is not an environment variable name (e.g. HUB_SRC_CRM_SECRET)")
        return value


class SourcesFile(BaseModel):
    """``mappings/sources.yaml`` (its JSON Schema is in mappings/schema/)."""

    model_config = ConfigDict(extra="forbid")
    sources: list[SourceEntry] = Field(default_factory=list)


def load_entries(folder: Path) -> list[tuple[str, SourceEntry]]:
    """Each entry with where it is (``file:line: sources.N``), for problems found later."""
    path = folder / SOURCES_FILE
    if not path.exists():
        return []
    entries = load_model(path, SourcesFile).sources
    root = yaml_tree(path)
    located = [(f"{path}:{line_of(root, ['sources', index])}: sources.{index}", entry) for index, entry in enumerate(entries)]
    problems = _id_problems(located)
    if problems:
        raise ConfigError(problems)
    return located


def _id_problems(located: list[tuple[str, SourceEntry]]) -> list[str]:
    """Ids the hub cannot serve: here rather than where sources are built, so `touchhub mappings check` refuses
    what start-up refuses."""
    problems: list[str] = []
    seen: set[str] = set()
    for where, entry in located:
        if entry.id == DEFAULT_SOURCE_ID:
            problems.append(f"{where}.id: {entry.id!r} is the built-in source of HUB_DEFAULT_WRITE_KEY; pick another id")
        elif entry.id in seen:
            problems.append(f"{where}.id: {entry.id!r} is used twice; source ids must be unique")
        seen.add(entry.id)
    return problems


def build_source(
    registry: Registry, entry: SourceEntry, where: str, environment: Mapping[str, str], folder: Path,
    *, need_secrets: bool = True,
) -> Source:
    """The connector instance for one entry; ConfigError names `where`, the key and the reason.

    Without `need_secrets` (previews and checks, which never verify a
    signature) a missing secret is replaced by a placeholder.
    """
    connector = registry.sources.get(entry.connector)
    if connector is None:
        known = ", ".join(sorted(registry.sources)) or "none"
        raise ConfigError(f"{where}.connector: no source connector {entry.connector!r} is installed (installed: {known})")
    secret_keys = {name for name, field in connector.Config.model_fields.items() if is_secret(field.annotation)}
    problems = [
        f"{where}.config.{key}: is a secret; name an environment variable under `secrets:` instead"
        for key in entry.config if key in secret_keys
    ]
    values = dict(entry.config)
    for key, env_name in entry.secrets.items():
        if env_name in environment:
            values[key] = environment[env_name]
        elif need_secrets:
            problems.append(f"{where}.secrets.{key}: environment variable {env_name} is not set")
        else:
            values[key] = PLACEHOLDER_SECRET
    if problems:
        raise ConfigError(problems)
    return connector(entry.id, connector.validate_config(where, values), folder)


def environment() -> dict[str, str]:
    """Process environment over `.env`, the same precedence HubSettings uses."""
    return {**{k: v for k, v in dotenv_values(".env").items() if v is not None}, **os.environ}


def is_secret(annotation: Any) -> bool:
    """Whether a config field holds a secret: `SecretStr`, optional or not, with validators (`CurrentSecret`) or not."""
    if get_origin(annotation) is Annotated:
        return is_secret(get_args(annotation)[0])
    return annotation is SecretStr or any(is_secret(argument) for argument in get_args(annotation))


def shared_write_keys(located: Sequence[tuple[str, Source]]) -> list[str]:
    """A problem for each source whose write key an earlier one already has (each source given with where it is
    configured; the default one first, so a clash is always named at its sources.yaml entry).

    The SDK endpoints file a request under the first source its key opens
    (`Hub.authenticate`): the later source would silently receive nothing, and
    its traffic would go through the other's mapping. Keys are compared by the
    digest the sources keep, never in clear.
    """
    first: dict[bytes, str] = {}
    problems = []
    for where, source in located:
        digest = source.write_key_digest
        if digest is None:
            continue
        if digest in first:
            problems.append(
                f"{where}.secrets.write_key: is the same write key as {first[digest]}, whose source would take "
                "all the SDK traffic sent with it; give each source a key of its own"
            )
        else:
            first[digest] = where
    return problems
