"""Studies that train many small runs and report what they measure (``adaclip-rl study ...``)."""

from .config import LEVELS, METHODS, Level, Method, StudyConfig
from .runner import run_study

__all__ = ["LEVELS", "METHODS", "Level", "Method", "StudyConfig", "run_study"]
