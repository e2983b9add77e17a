"""w2v: fine-tune wav2vec2 / XLS-R for CTC speech recognition, from sharded audio to an n-gram LM."""

__version__ = "0.1.0"
