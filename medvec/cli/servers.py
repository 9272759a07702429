"""`medvec serve`, `medvec mcp` and `medvec embed-server`: the long-running servers."""

from __future__ import annotations

import argparse
import logging

from medvec.cli.options import add_collection_option
from medvec.settings import get_settings


def register(sub) -> None:
    p = sub.add_parser("embed-server", help="serve a local model over the NIM embeddings protocol")
    p.add_argument("--model", help="registry name or Hugging Face id (default: $MEDVEC_MODEL)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 to serve others)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--max-batch", type=int, default=64, help="most inputs embedded in one forward pass (default 64)")
    p.set_defaults(func=cmd_embed_server)

    p = sub.add_parser("serve", help="HTTP API and web page for search")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    p.add_argument("--model", help="registry name (default: $MEDVEC_MODEL)")
    p.add_argument("--collection", metavar="NAME", help="the collection answered without ?collection= "
                   "(default: $MEDVEC_COLLECTION, else the home itself); every collection is served")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("mcp", help="MCP server on stdio with search tools for assistants")
    p.add_argument("--model", help="registry name (default: $MEDVEC_MODEL)")
    p.add_argument("--collection", metavar="NAME", help="the collection searched when a tool names none "
                   "(default: $MEDVEC_COLLECTION, else the home itself); tools may name any collection")
    p.set_defaults(func=cmd_mcp)


def cmd_embed_server(args: argparse.Namespace) -> int:
    from medvec.embedders.factory import embedder_config, local_config, open_embedder
    from medvec.serve.embed_server import serve

    logging.getLogger("medvec.serve.embed_server").setLevel(logging.INFO)  # its startup line is for the operator
    settings = get_settings()
    # The server always runs the model here, whatever MEDVEC_EMBEDDER says the pipeline uses.
    config = local_config(embedder_config(settings, args.model or settings.model, kind="local", device=args.device))
    key = settings.embed_server_key
    with open_embedder(config) as embedder:
        serve(embedder, args.host, args.port, max_batch=args.max_batch, api_key=key and key.get_secret_value())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from medvec.serve.http_api import serve

    settings = get_settings()
    return serve(settings, host=args.host, port=args.port, model=args.model,
                 token=settings.api_token and settings.api_token.get_secret_value())


def cmd_mcp(args: argparse.Namespace) -> int:
    from medvec.serve.mcp import run_stdio

    return run_stdio(get_settings(), model=args.model)
