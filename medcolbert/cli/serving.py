"""The serve command: the HTTP service over one index or a shard set."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import MedColbertError
from ..validation import int_option
from .common import _add_query_encoder_arg, _add_shard_args


def _parser_serve(sub: argparse._SubParsersAction) -> None:
    """The `serve` command's options."""
    p = sub.add_parser("serve", help="serve search and rerank over HTTP (FastAPI + uvicorn)",
                       description="Serve POST /search, POST /rerank, POST /documents (add), POST /documents/delete, "
                                   "GET /health, GET /metrics and the OpenAPI document at /docs. Binds to "
                                   "127.0.0.1 unless told otherwise. With --api-key-file or $MEDCOLBERT_API_KEY set, "
                                   "every endpoint but /health needs the key (header X-API-Key or Bearer).")
    p.add_argument("--index", required=True)
    p.add_argument("--model", default=None, help="default: the model recorded in the index manifest")
    _add_query_encoder_arg(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int_option(1, 65535), default=8000)
    p.add_argument("--api-key-file", default=None, help="file whose first line is the API key (never logged)")
    p.add_argument("--batching", choices=["auto", "on", "off"], default="auto",
                   help="encode concurrent queries in one batch: auto = on CUDA only (on CPU it was slower)")
    p.add_argument("--first-stage", action="append", default=[], metavar="NAME[:ARG]",
                   help="a registered first stage (bm25, dense, dense:MODEL) that /search may start from with "
                        "\"first_stage\": its top \"depth\" documents reranked by exact MaxSim; repeatable; "
                        "needs an index that stores its documents")
    _add_shard_args(p, "a shard set: answer from the shards that respond, marked \"partial\" (default: 503)")

def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP service until interrupted."""
    try:
        import uvicorn

        from ..service import create_app, read_api_key, timed_http_protocol
    except ImportError as exc:
        raise MedColbertError(f"serving needs FastAPI, uvicorn and prometheus-client: pip install 'medcolbert[serve]' ({exc})") from None
    from ..indexing.shards import is_shard_set, read_set
    from ..indexing.storage import read_manifest

    api_key = read_api_key(args.api_key_file)
    if is_shard_set(args.index):
        from ..shard_service import create_shard_app

        read_set(args.index)   # a broken set fails here, before the server starts
        if args.query_encoder != "full":
            raise MedColbertError("--query-encoder: a shard set is served with the full query encoder only")
        if args.first_stage:
            raise MedColbertError("--first-stage: a shard set is served by PLAID only")
        app = create_shard_app(args.index, args.model, api_key=api_key, ray=args.ray, replicas=args.replicas,
                               ray_address=args.ray_address, allow_partial=args.allow_partial)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                    http=timed_http_protocol(app.state.service.limits.header_timeout_s))
        return 0
    if args.ray:
        raise MedColbertError(f"--ray serves a shard set (built with index --shards); {args.index} is one index")
    read_manifest(Path(args.index))  # a wrong path fails here, before the server starts
    try:
        app = create_app(args.index, args.model, api_key=api_key,
                         batching={"auto": None, "on": True, "off": False}[args.batching], first_stages=args.first_stage,
                         query_encoder=args.query_encoder)
    except ValueError as exc:  # an unknown --first-stage, refused before the server starts
        raise MedColbertError(f"--first-stage: {exc}") from None
    limits = app.state.service.limits
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                http=timed_http_protocol(limits.header_timeout_s))
    return 0
