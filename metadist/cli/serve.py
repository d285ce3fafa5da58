"""`metadist serve | query`: put a checkpoint behind a gRPC few-shot service; ask it about a folder of images."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading

import yaml

from metadist.errors import ConfigError

logger = logging.getLogger("metadist.serve")

# Shortcut flags of `serve` → ServeConfig fields; anything else goes through --set KEY=VALUE.
_SERVE_FLAGS = ("checkpoint", "address", "device", "inner_steps", "token_file", "tls_cert", "tls_key", "tls_client_ca")


def add_commands(commands) -> None:
    serve = commands.add_parser("serve", help="serve a checkpoint over gRPC: adapt to support sets, classify queries (docs/serving.md)")
    serve.add_argument("--checkpoint", help="checkpoint file, or a folder (its newest checkpoint); required unless in --config")
    serve.add_argument("--config", metavar="FILE", help="YAML file of ServeConfig settings (metadist/serving/config.py)")
    serve.add_argument("--address", help="host:port to listen on (default 127.0.0.1:50051; port 0 picks a free one)")
    serve.add_argument("--device", help="torch device (default cpu)")
    serve.add_argument("--inner-steps", type=int, help="adaptation steps (default: the checkpoint's algorithm.eval_inner_steps)")
    serve.add_argument("--token-file", help="require the token in this file (or set $METADIST_SERVE_TOKEN)")
    serve.add_argument("--tls-cert", help="PEM certificate chain: serve TLS (with --tls-key)")
    serve.add_argument("--tls-key", help="PEM private key")
    serve.add_argument("--tls-client-ca", help="PEM CA bundle: require client certificates it signed (mutual TLS)")
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="any other setting, e.g. --set max_concurrency=4 --set handle_ttl_s=60 (repeatable)")
    serve.add_argument("--print-config", action="store_true", help="print the resolved settings (token redacted) and exit")
    serve.set_defaults(handler=_serve)

    query = commands.add_parser("query", help="ask a `metadist serve` server to classify query images given a support folder")
    query.add_argument("--address", required=True, help="host:port of the server")
    query.add_argument("--support", required=True, help="folder with one sub-folder of images per class")
    query.add_argument("--query", required=True, nargs="+", help="query image files and/or folders")
    query.add_argument("--token", help="the server's token (visible in process listings: prefer --token-file or $METADIST_SERVE_TOKEN)")
    query.add_argument("--token-file", help="read the token from this file")
    query.add_argument("--tls-ca", help="PEM certificate(s) to trust: connect with TLS")
    query.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's certificate authorities")
    query.add_argument("--tls-server-name", help="check the server's certificate against this name instead of the address's host")
    query.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="deadline of the call (default 60)")
    query.set_defaults(handler=_query)


# -- serve -----------------------------------------------------------------------------------------------------------
def serve_config(args):
    """ServeConfig from --config, then the shortcut flags, then --set; validated as a whole."""
    from metadist.config import read_mapping, set_dotted, validate
    from metadist.serving import ServeConfig

    raw = read_mapping(args.config, "serve configuration file") if args.config else {}
    raw.update({key: getattr(args, key) for key in _SERVE_FLAGS if getattr(args, key) is not None})
    set_dotted(raw, args.overrides, example="max_concurrency=4")
    if "checkpoint" not in raw:
        raise ConfigError("--checkpoint: required (or `checkpoint:` in --config)")
    return validate(ServeConfig, raw, args.config or "serve settings")


def _serve(args) -> int:
    from metadist.serving import Server

    config = serve_config(args)
    if args.print_config:
        print(yaml.safe_dump(config.redacted(), sort_keys=False), end="")
        return 0
    server = Server(config).start()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    # One line for people and scripts (the bound port, when --address asked for port 0).
    print(f"metadist serve: listening on {server.address}", file=sys.stderr, flush=True)
    while not stop.wait(0.5):
        pass
    logger.info("stopping: calls in progress have %g s to finish", config.grace_s)
    server.stop()
    return 0


# -- query -----------------------------------------------------------------------------------------------------------
def _query(args) -> int:
    from metadist.inference import read_queries, read_support
    from metadist.serving import Client
    from metadist.serving.config import read_token

    if args.token is not None and args.token_file is not None:
        raise ConfigError("--token and --token-file: give one")
    token = read_token(args.token, args.token_file)  # the server's rule: else $METADIST_SERVE_TOKEN, else none
    support_images, support_labels = read_support(args.support)
    query_images, sources = read_queries(args.query)
    with Client(args.address, token=token, tls_ca=args.tls_ca, tls=args.tls, tls_server_name=args.tls_server_name,
                timeout_s=args.timeout) as client:
        predictions = client.adapt_and_classify(support_images, support_labels, query_images)
    for source, prediction in zip(sources, predictions):
        print(json.dumps({"query": source, "label": prediction.label, "scores": prediction.scores}))
    return 0
