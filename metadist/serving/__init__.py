"""Few-shot adaptation as a gRPC service: `metadist serve` / `Server`, `metadist query` / `Client`.

The service is defined in fewshot.proto (package metadist.serving.v1); fewshot_pb2*.py are generated from it by
`python -m metadist.serving.codegen`. Usage, limits and security: docs/serving.md.
"""

from metadist.errors import ServingError
from metadist.serving.client import Client, RemoteTask
from metadist.serving.config import ServeConfig
from metadist.serving.server import Server

__all__ = ["Client", "RemoteTask", "ServeConfig", "Server", "ServingError"]
