"""The demo model's input word count: incremental, and always what a full count gives."""

from __future__ import annotations

import random

from agent_service.providers.base import ChatMessage
from agent_service.providers.demo import _InputWords


def full(conversation: list[ChatMessage]) -> int:
    return sum(len(m.content.split()) for m in conversation)


def test_extended_changed_shortened_and_foreign_conversations_count_like_a_full_count() -> None:
    rng = random.Random(15)
    count = _InputWords(limit=3)
    sessions: list[list[ChatMessage]] = [[] for _ in range(5)]
    for step in range(2000):
        index = rng.randrange(len(sessions))
        conversation = sessions[index]
        action = rng.random()
        words = " ".join("w" for _ in range(rng.randrange(4)))
        if action < 0.6 or not conversation:  # the context grows
            conversation = [*conversation, ChatMessage("user", words)]
        elif action < 0.75:  # a message in the middle is another object (a reload)
            at = rng.randrange(len(conversation))
            conversation = [*conversation]
            conversation[at] = ChatMessage("assistant", words)
        elif action < 0.9:  # shorter
            conversation = conversation[: rng.randrange(len(conversation))]
        else:  # the same first message, then something else entirely
            conversation = [conversation[0], ChatMessage("user", words)]
        sessions[index] = conversation
        assert count(conversation) == full(conversation), f"step {step}"
