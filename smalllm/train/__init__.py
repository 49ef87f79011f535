"""Pretraining on accelerate: setup -> fit, with callbacks for logging, evaluation and checkpoints."""
