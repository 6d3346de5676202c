"""`tacotune auto`: from a dataset directory to a registered, reported voice.

pipeline.py  the stages and their resumable state (OUT/auto.json)
report.py    OUT/report.md and its plots
"""

from tacotune.auto.pipeline import run_auto

__all__ = ["run_auto"]
