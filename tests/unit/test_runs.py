"""The run queue's pure core: what a message does while a run is active."""

from agent_service.runs import BusyPolicy, Decision, RunQueue


def test_first_message_starts_at_once() -> None:
    queue = RunQueue()
    assert queue.receive_message("r1", BusyPolicy.QUEUE) == Decision(start_now=True)
    assert queue.active == "r1"


def test_queue_policy_runs_messages_one_after_another_in_order() -> None:
    queue = RunQueue()
    queue.receive_message("r1", BusyPolicy.QUEUE)
    assert queue.receive_message("r2", BusyPolicy.QUEUE) == Decision(queued=True)
    assert queue.receive_message("r3", BusyPolicy.QUEUE) == Decision(queued=True)
    assert queue.receive_run_ended("r1") == "r2"
    assert queue.receive_run_ended("r2") == "r3"
    assert queue.receive_run_ended("r3") is None
    assert not queue.busy


def test_reject_policy_refuses_while_busy_and_changes_nothing() -> None:
    queue = RunQueue()
    queue.receive_message("r1", BusyPolicy.QUEUE)
    assert queue.receive_message("r2", BusyPolicy.REJECT) == Decision(rejected=True)
    assert queue.active == "r1"
    assert queue.waiting == ()


def test_interrupt_cancels_the_active_run_drops_the_queue_and_runs_next() -> None:
    queue = RunQueue()
    queue.receive_message("r1", BusyPolicy.QUEUE)
    queue.receive_message("r2", BusyPolicy.QUEUE)
    decision = queue.receive_message("r3", BusyPolicy.INTERRUPT)
    assert decision == Decision(queued=True, cancel_active="r1", dropped=("r2",))
    assert queue.receive_run_ended("r1") == "r3"


def test_a_queued_run_can_be_removed_before_it_starts() -> None:
    queue = RunQueue()
    queue.receive_message("r1", BusyPolicy.QUEUE)
    queue.receive_message("r2", BusyPolicy.QUEUE)
    assert queue.remove_waiting("r2")
    assert not queue.remove_waiting("r2")
    assert queue.receive_run_ended("r1") is None


def test_an_unknown_run_ending_changes_nothing() -> None:
    queue = RunQueue()
    queue.receive_message("r1", BusyPolicy.QUEUE)
    assert queue.receive_run_ended("r9") is None
    assert queue.active == "r1"
