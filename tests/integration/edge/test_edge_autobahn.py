"""The Autobahn|Testsuite fuzzing client against the real edge's `/ws`.

The suite expects an echo server; the edge answers frames with `error` frames
instead, so the suite's echo verdicts ("behavior") fail by design. What is judged
is what the edge owes every WebSocket peer: each case's closing handshake
("behaviorClose") is protocol-correct, every close code is one the protocol
allows, the edge stays up, logs no traceback, and an honest client still chats.

The suite runs on Python 2.7 (`autobahntestsuite==0.8.2`, installed into
var/autobahntestsuite-0.8.2 with that Python's pip on first use). Without a
Python 2.7 the test skips, saying so. `make test` runs the framing, ping,
reserved-bit, opcode, fragmentation, UTF-8 and close cases, less the few that
wait 10 s each for an echo of a large message; `make soak` (AGENT_RELAY_SOAK=1)
runs those too, and the large-message (9.*) and compression (12.*, 13.*) cases;
a message over the edge's hard limit (1 MiB) closes 1009 there, as documented.
"""

from __future__ import annotations

import asyncio
import collections
import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.edge import EdgeClient, create_session, start_edge
from tests.support.process import REPO
from tests.support.timing import scaled

pytestmark = [pytest.mark.slow, pytest.mark.soak, pytest.mark.timeout(1800)]

SUITE = "autobahntestsuite==0.8.2"
SITE = REPO / "var" / "autobahntestsuite-0.8.2"
SOAK = os.environ.get("AGENT_RELAY_SOAK") == "1"
CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]
# Each of these waits the suite's 10 s for an echo of a large message the edge refuses.
SLOW_CASES = ["1.1.6", "1.1.7", "1.1.8", "1.2.6", "1.2.7", "1.2.8", "10.1.1"]
SOAK_CASES = [*CASES, "9.*", "12.*", "13.*"]
# 7.9.5 sends a close frame with code 1006, which may not appear on the wire: aiohttp
# answers it with 1000 where the suite wants 1002 (an aiohttp echo server fails it too).
KNOWN_CLOSE_DEVIATIONS = {"7.9.5"}
ALLOWED_CLOSE_CODES = {1000, 1002, 1007, 1008, 1009, 1013, None}


def python27() -> str | None:
    """A Python 2.7: AGENT_RELAY_PYTHON27, pyenv's, or one on PATH."""
    explicit = os.environ.get("AGENT_RELAY_PYTHON27")
    if explicit:
        return explicit
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(os.path.join(root, "versions", "2.7*", "bin", "python2.7")))
    if found:
        return found[-1]
    return shutil.which("python2.7")


RUN_WSTEST = (
    "import site, sys; site.addsitedir(sys.argv[1]); sys.argv = ['wstest'] + sys.argv[2:]; "
    "from autobahntestsuite.wstest import run; run()"
)


def ensure_suite(python: str) -> None:
    probe = [python, "-c", f"import site; site.addsitedir({str(SITE)!r}); import autobahntestsuite"]
    if subprocess.run(probe, capture_output=True).returncode == 0:
        return
    SITE.mkdir(parents=True, exist_ok=True)
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--target", str(SITE), SUITE],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if install.returncode != 0:
        pytest.skip(f"could not install {SUITE} with {python}: {install.stderr[-800:]}")


async def honest_chats(edge, stop: asyncio.Event) -> int:
    """Chat through the edge until stop is set; the number of replies completed."""
    session = create_session(edge)
    sid = session["session_id"]
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    await client.join(sid)
    done = 0
    while not stop.is_set() or done == 0:
        ack = await client.say(sid, f"message {done}")
        assert ack["type"] == "ack", ack
        await client.until_complete(sid, ack["run_id"])
        done += 1
    await client.close()
    return done


async def test_the_autobahn_fuzzing_client_finds_only_protocol_correct_closes(
    agent, tmp_path: Path
):
    python = python27()
    if python is None:
        pytest.skip(
            "no Python 2.7 here (pyenv versions lists none, AGENT_RELAY_PYTHON27 unset): "
            "the Autobahn|Testsuite fuzzing client runs only on Python 2.7"
        )
    ensure_suite(python)
    edge = start_edge(agent.address)
    try:
        spec = {
            "outdir": str(tmp_path / "reports"),
            "servers": [
                {
                    "agent": "edge",
                    "url": edge.ws_url,
                    "protocols": ["agent-relay.v1"],
                    "options": {"version": 18},
                }
            ],
            "cases": SOAK_CASES if SOAK else CASES,
            "exclude-cases": [] if SOAK else SLOW_CASES,
            "exclude-agent-cases": {},
        }
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        fuzzer = await asyncio.create_subprocess_exec(
            python,
            "-c",
            RUN_WSTEST,
            str(SITE),
            "-m",
            "fuzzingclient",
            "-s",
            "spec.json",
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        stop = asyncio.Event()
        honest = asyncio.create_task(honest_chats(edge, stop))
        try:
            output, _ = await asyncio.wait_for(fuzzer.communicate(), scaled(3600 if SOAK else 900))
        finally:
            if fuzzer.returncode is None:
                fuzzer.kill()
            stop.set()
        replies = await asyncio.wait_for(honest, scaled(60))
        assert fuzzer.returncode == 0, output[-3000:].decode(errors="replace")
        results = json.loads((tmp_path / "reports" / "index.json").read_text())["edge"]
        assert edge.process.poll() is None, "the edge died under the fuzzing client"
        closes = collections.Counter(r["behaviorClose"] for r in results.values())
        codes = collections.Counter(r.get("remoteCloseCode") for r in results.values())
        print(
            f"\nautobahn: {len(results)} cases; closing handshake {dict(closes)}; "
            f"edge close codes {dict(codes)}; an honest client meanwhile got {replies} replies"
        )
        wrong = {
            case: r
            for case, r in results.items()
            if r["behaviorClose"] not in ("OK", "INFORMATIONAL")
            and case not in KNOWN_CLOSE_DEVIATIONS
            # A message over hard_max_frame_bytes (1 MiB; the 9.* and 12.*/13.* cases send
            # up to 16 MiB) closes 1009 as documented, where the suite expected an echo.
            and r.get("remoteCloseCode") != 1009
        }
        assert not wrong, wrong
        assert set(codes) <= ALLOWED_CLOSE_CODES, codes
        assert len(results) >= (400 if SOAK else 230)
        assert replies >= 1
    finally:
        edge.stop()
    text = edge.text()
    assert "Traceback" not in text, text[-3000:]
