"""`tacotune auto`: from a dataset directory to a registered, reported voice.

plan.py      the hardware, the preset and the split of the budget
pipeline.py  the stages and their resumable state (OUT/auto.json)
vocoder.py   the optional HiFi-GAN stage
report.py    OUT/report.md and its plots
"""

from tacotune.auto.pipeline import NoVoiceError, run_auto

__all__ = ["NoVoiceError", "run_auto"]
