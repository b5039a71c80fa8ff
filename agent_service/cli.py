"""`agent-relay`: one command for every part of the system.

    agent-relay run       the whole system on this machine (service + edge + web UI),
                          restarted when a part crashes; Ctrl-C, SIGTERM or SIGHUP stop it
    agent-relay serve     the agent gRPC service (same as python -m agent_service)
    agent-relay edge      the WebSocket edge (same as python -m ws_edge)
    agent-relay chat      the terminal chat
    agent-relay tools     list the agent's tools
    agent-relay history   print a session's messages

`--help` after a subcommand shows its flags.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

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
    if command in {"chat", "tools", "history"}:
        from agent_relay_client.cli import main as client_main  # type: ignore[import-not-found,unused-ignore]

        return int(client_main([command, *rest]))
    print(f"agent-relay: unknown command {command!r}\n\n{USAGE.strip()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
