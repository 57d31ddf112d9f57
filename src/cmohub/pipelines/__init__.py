"""One function per DAG task: each composes sources, formats, mapping, vault, contracts and
the lake, takes a :class:`~cmohub.pipelines.context.RunContext` and returns a small, JSON-ready
result (references, counts, hashes — never records). No airflow import here: cmohub.airflow
adapts these functions to tasks, and the CLI calls them directly.
"""
