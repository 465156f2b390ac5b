"""twistd plugin module for ``mbt-tracker`` (``Options`` + ``makeService``)."""

from mbt.tap import TrackerOptions as Options, makeTrackerService as makeService

__all__ = ["Options", "makeService"]
