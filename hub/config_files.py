"""Loading ops-edited YAML into validated models, reporting every problem at once.

Ops people edit these files by hand; one bad key must produce a message that
names the file, the key and the reason, together with every other problem in
the same file, so a fix is one edit, not a loop of restarts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from hub.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


def load_model(path: Path, model: type[ModelT]) -> ModelT:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; create it or point HUB_MAPPINGS_DIR at the right folder") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return model.model_validate(document or {})
    except ValidationError as exc:
        raise ConfigError([_describe(path, error) for error in exc.errors()]) from None


def _describe(path: Path, error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    return f"{path}: {key}: {error['msg']}"
