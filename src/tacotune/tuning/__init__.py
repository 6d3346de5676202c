"""Self-tuning: an Optuna search over wired settings, each trial in its own process.

Optuna is imported only in this package.
"""

from tacotune.tuning.study import StudyResult, run_study

__all__ = ["StudyResult", "run_study"]
