"""What a received frame costs the browser client on each wire, measured in Chromium.

Builds clients/web's decode bench page (`vite build --mode bench`: clients/web/bench.html
and src/bench/decode.ts), serves it on 127.0.0.1, opens it in Debian's Chromium
(/usr/bin/chromium, through Playwright) and prints, for the edge's own recorded frames
(clients/spec/wire/frames.json), the time per frame of `jsonCodec.decode` (JSON.parse and
the checks, for a text frame) beside `protoCodec.decode` (protobuf-es's fromBinary, the
mapping to the same object, the same checks, for a binary frame), median and spread of the
rounds, and the bytes per frame on each wire. Above the codec both wires run the same
code, so this is the whole difference in the browser's receive path.

    .venv/bin/python bench/browser_decode.py [--rounds 15] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import shutil
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "clients" / "web"
DIST = WEB / "dist-bench"
CHROMIUM = "/usr/bin/chromium"
# the flags of tests/e2e/conftest.py: no network of its own on a closed machine
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def build() -> None:
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("browser_decode: npm is needed to build clients/web's bench page")
    if not (WEB / "node_modules").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)
    subprocess.run([npm, "run", "build:bench"], cwd=WEB, check=True, stdout=subprocess.DEVNULL)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve() -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_Quiet, directory=str(DIST))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/bench.html"


def run(rounds: int) -> dict[str, Any]:
    server, url = serve()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"{url}?rounds={rounds}")
            page.wait_for_function("() => window.__decodeBench !== undefined", timeout=300_000)
            result: dict[str, Any] = page.evaluate("() => window.__decodeBench")
            browser.close()
    finally:
        server.shutdown()
    return result


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json-out", help="also write the raw result here")
    args = parser.parse_args()
    build()
    result = run(args.rounds)
    print(f"Chromium: {result['userAgent']}")
    print(f"{args.rounds} rounds each, interleaved; ns per frame, median (min-max)")
    print(f"{'frames':<34} {'JSON (text)':>22} {'proto (binary)':>22} {'proto/JSON':>10}  bytes")
    labels = {
        "deltas": "chat:response batches",
        "events": "other session events",
        "all": "every recorded frame",
    }
    for key, label in labels.items():
        row = result[key]
        ratio = statistics.median(row["proto"]) / statistics.median(row["json"])
        print(
            f"{label + ' (' + str(row['frames']) + ')':<34} {spread(row['json']):>22} "
            f"{spread(row['proto']):>22} {ratio:>9.2f}x  "
            f"{row['jsonBytes']:.0f} / {row['protoBytes']:.0f}"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
