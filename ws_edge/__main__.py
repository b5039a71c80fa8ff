"""`python -m ws_edge`: run the WebSocket edge until SIGTERM or SIGINT, then drain."""

import sys

from ws_edge.server import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
