"""twistd plugin module for ``mbt-peer`` (``Options`` + ``makeService``)."""

from mbt.tap import PeerOptions as Options, makePeerService as makeService

__all__ = ["Options", "makeService"]
