"""twistd plugin module for ``twistd -n mbt-relay``."""

from mbt.relay.tap import Options, makeService  # noqa: F401
