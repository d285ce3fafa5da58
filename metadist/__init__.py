"""metadist: distributed meta-training on Ray with Arrow task shards and MLflow tracking."""

__version__ = "0.1.0"
