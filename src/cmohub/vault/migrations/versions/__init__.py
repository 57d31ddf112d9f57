"""Vault schema revisions, oldest first."""
