"""twistd plugin module for ``mbt-peer`` (``Options`` + ``makeService``)."""

from mbt.options import PeerOptions as Options
from mbt.tap import makePeerService as makeService

__all__ = ["Options", "makeService"]
