"""The hub's ASGI application: ingest, admin API, health and metrics."""

from hub.api.app import create_app

__all__ = ["create_app"]
