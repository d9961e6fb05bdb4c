"""JSON Schemas for the YAML files in mappings/, generated from the models that validate them.

Editors (via the `yaml-language-server` comment at the top of each file)
complete and lint with these; one source of truth means the schema can never
disagree with what the hub accepts.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from hub.identity_config import IdentityConfig
from hub.delivery_policy import DeliveryPolicyFile
from hub.mapping import MappingSpec
from hub.routes_file import RoutesFile
from hub.rules import RuleFile
from hub.sources import SourcesFile

SCHEMAS: dict[str, type[BaseModel]] = {
    "mapping.schema.json": MappingSpec,
    "triggers.schema.json": RuleFile,
    "routes.schema.json": RoutesFile,
    "identity.schema.json": IdentityConfig,
    "sources.schema.json": SourcesFile,
    "delivery.schema.json": DeliveryPolicyFile,
}


def render(model: type[BaseModel]) -> str:
    return json.dumps(model.model_json_schema(by_alias=True), indent=2, sort_keys=True) + "\n"


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in SCHEMAS.items():
        path = folder / name
        path.write_text(render(model), encoding="utf-8")
        written.append(path)
    return written
