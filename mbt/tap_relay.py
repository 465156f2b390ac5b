"""twistd plugin module for ``mbt-relay`` (``Options`` + ``makeService``)."""

from mbt.options import RelayOptions as Options
from mbt.relay.tap import makeService

__all__ = ["Options", "makeService"]
