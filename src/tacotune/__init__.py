"""tacotune: Russian Tacotron2 training that tunes and supervises itself.

from tacotune.config import load_config
from tacotune.data.prepare import prepare_dataset
from tacotune.synthesize import Synthesizer
from tacotune.train import resume, train
speech = Synthesizer("runs/demo/train").speak("Добрый вечер!")

The package itself holds only the version, so importing any part loads only that part.
"""

__version__ = "0.1.0"
