"""twistd plugin module for ``mbt-tracker`` (``Options`` + ``makeService``)."""

from mbt.options import TrackerOptions as Options
from mbt.tap import makeTrackerService as makeService

__all__ = ["Options", "makeService"]
