"""Training: the loop, checkpoints, evaluation."""

from tacotune.train.loop import TrainResult, resume, train

__all__ = ["TrainResult", "resume", "train"]
