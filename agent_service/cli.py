"""`agent-relay`: one command for every part of the system.

    agent-relay run       the whole system on this machine (service + edge + web UI),
                          restarted when a part crashes; Ctrl-C, SIGTERM or SIGHUP stop it
    agent-relay cluster   2 agent replicas and 2 edges on this machine, on a shared Redis
                          and PostgreSQL (started when they do not answer); Ctrl-C stops it
    agent-relay serve     the agent gRPC service (same as python -m agent_service)
    agent-relay edge      the WebSocket edge (same as python -m ws_edge)
    agent-relay chat      the terminal chat
    agent-relay tools     list the agent's tools
    agent-relay history   print a session's messages
    agent-relay token     mint a bearer token for a backend caller of the gRPC service

`--help` after a subcommand shows its flags.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

USAGE = __doc__ or ""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(USAGE.strip())
        return 0
    command, rest = args[0], args[1:]
    if command == "serve":
        from agent_service.server import main as serve_main

        return serve_main(rest)
    if command == "edge":
        from ws_edge.__main__ import main as edge_main  # type: ignore[import-not-found,unused-ignore]

        return int(edge_main(rest))
    if command == "run":
        from agent_service.supervisor import main as run_main

        return run_main(rest)
    if command == "cluster":
        from agent_service.cluster import main as cluster_main

        return cluster_main(rest)
    if command == "token":
        return mint_token_command(rest)
    if command in {"chat", "tools", "history"}:
        from agent_relay_client.cli import main as client_main  # type: ignore[import-not-found,unused-ignore]

        return int(client_main([command, *rest]))
    print(f"agent-relay: unknown command {command!r}\n\n{USAGE.strip()}", file=sys.stderr)
    return 2


def mint_token_command(argv: Sequence[str]) -> int:
    """`agent-relay token --sub backend-1 --scope "read chat" --ttl 3600`: print a JWT.

    Signed with the service's --auth-jwt-secret (AGENT_RELAY_AUTH_JWT_SECRET), or with
    --private-key-file (RS256 / ES256) when the service checks a public key."""
    import argparse

    from agent_service.auth import HMAC_ALGORITHM, MIN_SECRET_BYTES, SCOPES, mint_token

    parser = argparse.ArgumentParser(prog="agent-relay token", description=mint_token.__doc__)
    parser.add_argument("--sub", required=True, help="the caller: a user id or a service's name")
    parser.add_argument("--scope", required=True, help=f"space-separated: {' '.join(SCOPES)}")
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds [3600]")
    parser.add_argument(
        "--users", default=None, help="comma-separated user ids it may act for [its sub]"
    )
    parser.add_argument(
        "--auth-jwt-secret",
        default=os.environ.get("AGENT_RELAY_AUTH_JWT_SECRET", ""),
        help="the service's HS256 secret [env AGENT_RELAY_AUTH_JWT_SECRET]",
    )
    parser.add_argument("--private-key-file", type=Path, help="PEM RSA or EC P-256 private key")
    args = parser.parse_args(list(argv))
    key: object = args.auth_jwt_secret
    algorithm = HMAC_ALGORITHM
    if args.private_key_file is not None:
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        key = load_pem_private_key(args.private_key_file.read_bytes(), password=None)
        algorithm = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
    elif len(args.auth_jwt_secret.encode()) < MIN_SECRET_BYTES:
        parser.error(
            f"set --auth-jwt-secret (or AGENT_RELAY_AUTH_JWT_SECRET, at least {MIN_SECRET_BYTES} "
            "bytes) or --private-key-file"
        )
    users = None if args.users is None else [u for u in args.users.split(",") if u]
    try:
        token = mint_token(
            key,
            subject=args.sub,
            scopes=args.scope,
            ttl_s=args.ttl,
            now=time.time(),
            users=users,
            algorithm=algorithm,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
