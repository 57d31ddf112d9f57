"""Alembic migrations of the vault schema (run by ``cmohub vault init``; see vault/store.py)."""
