"""The shared trainer: config composition/validation, the loop, evaluation, meters, records."""
from .config import ConfigError, compose, validate
from .loop import train

__all__ = ["ConfigError", "compose", "train", "validate"]
