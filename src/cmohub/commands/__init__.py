"""Command groups of the ``cmohub`` CLI, one module per group (registered in cmohub.cli)."""
