"""Renderers of the sandbox program into each source's own wire format.

Each module renders journeys as text (pure functions named ``render_*``) plus a ``*Writer``
that appends them to the output tree and counts what it wrote. ``docs/sandbox.md`` documents
every file kind these produce.
"""
