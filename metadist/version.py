"""The metadist version (kept equal to pyproject.toml's): a leaf module, so reading it imports nothing else."""

__version__ = "0.1.0"
