"""Nightly reconciliation: rules over the joined canonical tables (pure)."""
