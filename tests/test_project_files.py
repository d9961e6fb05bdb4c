"""The files around the code stay true: migrations match the models, schemas match, README matches CI."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from hub.mapping import load_mapping
from hub.routes_file import load_routes
from hub.rules import load_rules
from hub.schemas import SCHEMAS, render
from hub.settings import PROJECT_MAPPINGS, HubSettings
from hub.store import Store
from hub.store.engine import WAL_AUTOCHECKPOINT_PAGES
from hub.store.schema import metadata

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_migrations_produce_exactly_the_schema_the_code_uses(database_url: str) -> None:
    store = Store(database_url)
    assert not store.is_current()
    store.migrate()
    store.migrate()  # idempotent
    assert store.is_current()
    with store.read() as connection:
        assert compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), metadata) == []
    store.dispose()


def test_sqlite_store_runs_in_wal_mode_with_full_sync_large_checkpoints_and_journals_in_memory(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/w.db")
    with store.read() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == WAL_AUTOCHECKPOINT_PAGES
        assert connection.exec_driver_sql("PRAGMA temp_store").scalar() == 2  # MEMORY: savepoint sub-journals


def test_committed_json_schemas_are_generated_from_the_models() -> None:
    for name, model in SCHEMAS.items():
        assert (PROJECT_MAPPINGS / "schema" / name).read_text() == render(model), f"regenerate {name}"


def test_shipped_mapping_files_load() -> None:
    assert load_mapping(PROJECT_MAPPINGS / "segment.yaml").label("Order Completed").moment == "purchase"
    assert [rule.id for rule in load_rules(PROJECT_MAPPINGS / "triggers.yaml")] == [
        "high_intent_pricing", "cart_abandonment", "comparison_hesitation", "post_purchase_support"]
    routes = load_routes(PROJECT_MAPPINGS / "routes.yaml")
    assert (routes["sms"].target, routes["crm"].target) == ("phone", "profile_id")


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    [command] = re.findall(r"^# test\n(.+)$", readme, flags=re.MULTILINE)
    assert command.strip() in (ROOT / ".ci" / "run").read_text()


def test_env_example_documents_every_setting() -> None:
    documented = set(re.findall(r"^#?\s*HUB_([A-Z_]+)=", (ROOT / ".env.example").read_text(), flags=re.MULTILINE))
    assert documented == {name.upper() for name in HubSettings.model_fields}


def test_every_shipped_mapping_file_is_package_data_of_the_distribution() -> None:
    """Only the editable install found mappings/ (beside hub/): a wheel, `pip install .` or a Docker image had
    none, so the demo exited 2 and serve could not start. The folder ships as a namespace package's data, which
    lands beside hub/ in site-packages, where `PROJECT_MAPPINGS` looks."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["packages"]["find"].get("namespaces") and "mappings*" in setuptools["packages"]["find"]["include"]
    patterns = setuptools["package-data"]
    shipped = [path for path in PROJECT_MAPPINGS.rglob("*") if path.is_file() and "__pycache__" not in path.parts]
    assert shipped
    for path in shipped:
        package = ".".join(path.parent.relative_to(ROOT).parts)
        assert any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns.get(package, [])), (
            f"{path.relative_to(ROOT)} is not package data of {package}: add its pattern to pyproject.toml"
        )
