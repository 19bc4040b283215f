"""Studies that train many small runs and report what they measure (``adaclip-rl study ...``)."""

from .staleness import LEVELS, METHODS, Level, Method, StudyConfig, run_study

__all__ = ["LEVELS", "METHODS", "Level", "Method", "StudyConfig", "run_study"]
