"""smalllm: a small-LM pretraining testbed for studying when rare skills emerge.

Data flows through the package in this order:
``tasks`` (instance generators) -> ``data`` (tokenizer, background corpus, frequency-controlled
stream) -> ``model`` (Hugging Face model ladder) -> ``train`` (accelerate trainer) -> ``eval``
(per-task metrics, emergence) -> ``sweep`` (grids, aggregation, plots).
"""

__version__ = "0.1.0"
