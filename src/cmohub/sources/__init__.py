"""I/O connectors. Each takes its client or transport as a parameter (never builds one from
the environment), so tests hand it a mock transport or a loopback server."""
