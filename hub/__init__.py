"""Touchpoint Hub: durable ingest, identity resolution, micro-moment triggers, reliable delivery."""

__version__ = "0.1.0"
