"""Prefect flows, one per pipeline; each stage is one coarse Prefect task (see
docs/architecture.md)."""
