"""The slow-consumer policy: deltas coalesced when behind, then 1013 past the bound."""

import json

from ws_edge.room import DeltaInfo
from ws_edge.send_queue import SendQueue
from ws_edge.wire import OutFrame


class Raw(OutFrame):
    """A frame given as its JSON bytes."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        self.raw = raw

    def _encode_json(self) -> bytes:
        return self.raw


def delta(from_seq: int, seq: int, text: str, session: str = "s", run: str = "r") -> DeltaInfo:
    return DeltaInfo(session, run, 0, from_seq, seq, 0, text)


def push(queue: SendQueue, info: DeltaInfo) -> bool:
    return queue.push(info.encode(), info)


def drain(queue: SendQueue) -> list[dict]:
    out = []
    while (data := queue.pop()) is not None:
        out.append(json.loads(data))
    return out


def test_a_keeping_up_socket_gets_every_frame_unchanged():
    queue = SendQueue(max_bytes=10_000, max_frames=100, coalesce_after_frames=4)
    for seq in range(1, 4):
        assert push(queue, delta(seq, seq, f"t{seq}"))
    assert [f["text"] for f in drain(queue)] == ["t1", "t2", "t3"]
    assert queue.bytes == 0


def test_a_lagging_socket_gets_its_deltas_coalesced_losing_nothing():
    queue = SendQueue(max_bytes=10_000, max_frames=100, coalesce_after_frames=2)
    for seq in range(1, 11):
        assert push(queue, delta(seq, seq, str(seq % 10)))
    frames = drain(queue)
    assert len(frames) == 2
    assert frames[-1]["from_seq"] == 2 and frames[-1]["seq"] == 10
    assert "".join(f["text"] for f in frames) == "1234567890"
    assert queue.coalesced == 8


def test_deltas_are_not_merged_across_another_frame_of_their_session_or_another_run():
    queue = SendQueue(max_bytes=10_000, max_frames=100, coalesce_after_frames=0)
    push(queue, delta(1, 1, "a"))
    queue.push(Raw(b'{"type":"chat:tool_execution","seq":2}'), None, "s")
    push(queue, delta(3, 3, "b"))
    push(queue, delta(4, 4, "c", run="other"))
    push(queue, delta(1, 1, "x", session="s2"))
    push(queue, delta(2, 2, "y", session="s2"))
    frames = drain(queue)
    assert [f.get("text") for f in frames] == ["a", None, "b", "c", "xy"]


def test_past_the_byte_bound_push_says_close():
    queue = SendQueue(max_bytes=300, max_frames=100, coalesce_after_frames=1)
    assert queue.push(Raw(b"x" * 200), None, "s")
    assert queue.push(Raw(b"y" * 200), None, "s")
    assert not queue.push(Raw(b"z"), None, "s")


def test_one_frame_larger_than_the_bound_still_fits_an_empty_queue():
    queue = SendQueue(max_bytes=100, max_frames=100, coalesce_after_frames=1)
    assert queue.push(Raw(b"c" * 5000), None, "s")
    assert queue.pop() == b"c" * 5000
    assert queue.push(Raw(b"d"), None, "s")


def test_past_the_frame_bound_push_says_close():
    queue = SendQueue(max_bytes=10_000, max_frames=3, coalesce_after_frames=100)
    assert all(queue.push(Raw(b"{}"), None, "s") for _ in range(3))
    assert not queue.push(Raw(b"{}"), None, "s")


def test_bytes_the_transport_still_holds_count_against_the_bound():
    queue = SendQueue(max_bytes=1000, max_frames=100, coalesce_after_frames=100)
    assert queue.push(Raw(b"x" * 100), held_bytes=900)  # 900 held: at the bound, still fits
    assert not queue.push(Raw(b"x" * 100), held_bytes=901)  # 100 queued + 901 held: over
    empty = SendQueue(max_bytes=1000, max_frames=100, coalesce_after_frames=100)
    assert not empty.push(Raw(b"x"), held_bytes=1001)  # nothing queued, the transport is full


def test_a_coalesced_delta_counts_what_the_transport_holds_too():
    queue = SendQueue(max_bytes=1000, max_frames=100, coalesce_after_frames=1)
    assert push(queue, delta(1, 1, "a"))
    merged = delta(2, 2, "b")
    assert not queue.push(merged.encode(), merged, held_bytes=5000)


def test_the_frames_of_one_pass_are_admitted_as_one_large_frame_would_be():
    # A room cuts one large upstream response into frames of a bounded size; the socket has
    # read none of them when the next is pushed, so they are judged by the backlog before
    # the first, and the bound closes it only if it is still behind at a later pass.
    queue = SendQueue(max_bytes=100, max_frames=100, coalesce_after_frames=100)
    assert all(queue.push(Raw(b"x" * 80), None, "s", pass_id=7) for _ in range(4))
    assert not queue.push(Raw(b"y"), None, "s", pass_id=8)


def test_a_pass_is_not_excused_what_was_queued_before_it():
    queue = SendQueue(max_bytes=100, max_frames=100, coalesce_after_frames=100)
    assert queue.push(Raw(b"x" * 150), None, "s", pass_id=1)
    assert queue.pop() is not None  # written: the socket keeps up
    assert queue.push(Raw(b"x" * 150), None, "s", pass_id=2)
    assert not queue.push(Raw(b"x"), None, "s", pass_id=3)  # 150 still queued from pass 2
    assert not queue.push(Raw(b"x"), None, "s")  # a frame of no pass (a reply) likewise


def test_the_frames_of_one_pass_still_count_what_the_transport_holds():
    queue = SendQueue(max_bytes=100, max_frames=100, coalesce_after_frames=1)
    assert not queue.push(Raw(b"x" * 10), None, "s", held_bytes=101, pass_id=1)
    fresh = SendQueue(max_bytes=100, max_frames=100, coalesce_after_frames=1)
    assert fresh.push(delta(1, 1, "a" * 80).encode(), delta(1, 1, "a" * 80), pass_id=2)
    merged = delta(2, 2, "b" * 80)  # merged into the first: same pass, judged with it
    assert fresh.push(merged.encode(), merged, held_bytes=10, pass_id=2)
    assert not fresh.push(merged.encode(), merged, held_bytes=10, pass_id=3)


def test_a_frame_written_mid_pass_ends_what_the_pass_excuses():
    queue = SendQueue(max_bytes=100, max_frames=100, coalesce_after_frames=100)
    assert queue.push(Raw(b"x" * 150), None, "s", pass_id=4)
    assert queue.push(Raw(b"x" * 150), None, "s", pass_id=4)
    assert queue.pop() is not None  # written: the 150 left is a backlog like any other
    assert not queue.push(Raw(b"x"), None, "s", pass_id=4)
