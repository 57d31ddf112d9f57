"""Loopback servers that speak each source's protocol, serving a generated sandbox program."""
