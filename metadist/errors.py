"""Errors a person can act on: each names the file, field or class at fault."""


class MetadistError(Exception):
    """Base class; the CLI prints these without a traceback."""


class StorageError(MetadistError):
    """A URI cannot be used: no filesystem knows its protocol, or its store cannot be reached; the message names it."""


class ShardError(MetadistError):
    """A shard set (manifest or shard file) is missing, corrupted or of the wrong schema."""


class DataImportError(MetadistError):
    """An importer could not read its input (a file, an image, a layout)."""


class EpisodeError(MetadistError):
    """An episode cannot be sampled as asked (too few classes or examples)."""


class ConfigError(MetadistError):
    """A configuration value is invalid; the message names the field."""


class CheckpointError(MetadistError):
    """A checkpoint is missing, damaged, or does not fit what it is loaded into."""


class PredictionError(MetadistError):
    """A user's support or query input cannot be used (too few classes, unreadable or wrong-kind images)."""


class TrackingError(MetadistError):
    """The tracking server or store cannot be reached or refuses the run; the message names the URI."""


class ServingError(MetadistError):
    """A call to a metadist server failed; `code` is the gRPC status code's name (e.g. 'UNAUTHENTICATED')."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code
