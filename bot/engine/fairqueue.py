"""A queue that serves users round-robin instead of first come, first served.

One user's burst of ten jobs must not make everyone else wait for all ten: the service order interleaves users
(A1 B1 C1 A2 B2 A3 ...), least recently served user first, so a newcomer waits for at most one job of each
other user. The order is computed on demand, which also gives every job its queue position.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator
from itertools import zip_longest
from typing import Generic, TypeVar

Item = TypeVar("Item")


class FairQueue(Generic[Item]):
    def __init__(self) -> None:
        self._by_user: dict[Hashable, deque[Item]] = {}
        # When each user was last served (a counter); users never served, or served before everyone queued
        # now, count as 0 and keep their arrival order.
        self._last_served: dict[Hashable, int] = {}
        self._served = 0

    def __len__(self) -> int:
        return sum(len(items) for items in self._by_user.values())

    def __iter__(self) -> Iterator[Item]:
        """Items in the order they will be served."""
        rotation = sorted(self._by_user, key=lambda user: self._last_served.get(user, 0))
        for round_ in zip_longest(*(self._by_user[user] for user in rotation)):
            yield from (item for item in round_ if item is not None)

    def push(self, user: Hashable, item: Item) -> None:
        self._by_user.setdefault(user, deque()).append(item)

    def pending_for(self, user: Hashable) -> int:
        return len(self._by_user.get(user, ()))

    def position(self, item: Item) -> int | None:
        """0 for the next item to be served; None when absent."""
        for index, queued in enumerate(self):
            if queued is item:
                return index
        return None

    def remove(self, user: Hashable, item: Item) -> bool:
        items = self._by_user.get(user)
        if items is None or item not in items:
            return False
        items.remove(item)
        if not items:
            del self._by_user[user]
        return True

    def take(self, user_of: Callable[[Item], Hashable], fits: Callable[[list[Item], Item], bool]) -> list[Item]:
        """Take the next item and, in service order, every later item that `fits` the growing batch."""
        batch: list[Item] = []
        for item in self:
            if not batch or fits(batch, item):
                batch.append(item)
        for item in batch:
            user = user_of(item)
            self.remove(user, item)
            self._served += 1
            self._last_served[user] = self._served
        self._forget_old_turns()
        return batch

    def _forget_old_turns(self) -> None:
        """Drop turns older than every queued user's: sorting them as 0 then changes no order."""
        oldest_queued = min((self._last_served.get(user, 0) for user in self._by_user), default=self._served + 1)
        for user in [user for user, turn in self._last_served.items() if turn < oldest_queued]:
            if user not in self._by_user:
                del self._last_served[user]
