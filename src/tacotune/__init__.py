"""tacotune: Russian Tacotron2 training that tunes and supervises itself."""

from tacotune.config import Config, load_config

__version__ = "0.1.0"

__all__ = ["Config", "__version__", "load_config"]
