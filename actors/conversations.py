"""Multi-turn chat state: one small deployment shared by every ingress replica.

A conversation keeps its line, the image's visual tokens (so follow-up turns skip the
expert and the encoder) and its (question, answer) turns; LRU-evicted beyond
``max_conversations``; at most ``max_turns`` turns each.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict

import numpy as np
from ray import serve


@serve.deployment(name="conversations", num_replicas=1, ray_actor_options={"num_cpus": 0.01})
class Conversations:
    def __init__(self, max_conversations: int, max_turns: int) -> None:
        self.max_conversations = max_conversations
        self.max_turns = max_turns
        self.items: OrderedDict[str, dict] = OrderedDict()

    def create(self, line: str, tokens: np.ndarray) -> str:
        cid = secrets.token_urlsafe(12)
        self.items[cid] = {"line": line, "tokens": tokens, "turns": [], "created": time.time()}
        while len(self.items) > self.max_conversations:
            self.items.popitem(last=False)
        return cid

    def get(self, cid: str) -> dict | None:
        item = self.items.get(cid)
        if item is None:
            return None
        self.items.move_to_end(cid)
        return {**item, "turns": list(item["turns"]), "full": len(item["turns"]) >= self.max_turns}

    def append(self, cid: str, question: str, answer: str) -> int:
        item = self.items.get(cid)
        if item is None:
            return -1
        item["turns"].append((question, answer))
        return len(item["turns"])
