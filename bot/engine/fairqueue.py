"""A queue that serves users round-robin instead of first come, first served.

One user's burst of ten jobs must not make everyone else wait for all ten: the service order interleaves users
(A1 B1 C1 A2 B2 A3 ...), and a user who was just served goes to the back of the rotation. The order is computed
on demand, which also gives every job its queue position.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator
from itertools import zip_longest
from typing import Generic, TypeVar

Item = TypeVar("Item")


class FairQueue(Generic[Item]):
    def __init__(self) -> None:
        # Insertion order of this dict is the rotation: the first user is served next.
        self._by_user: dict[Hashable, deque[Item]] = {}

    def __len__(self) -> int:
        return sum(len(items) for items in self._by_user.values())

    def __iter__(self) -> Iterator[Item]:
        """Items in the order they will be served."""
        for round_ in zip_longest(*self._by_user.values()):
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
        """Take the next item and, in service order, every later item that `fits` the growing batch.

        Every user served moves to the back of the rotation, in the order served.
        """
        batch: list[Item] = []
        for item in self:
            if not batch or fits(batch, item):
                batch.append(item)
        for item in batch:
            user = user_of(item)
            self.remove(user, item)
            if user in self._by_user:
                self._by_user[user] = self._by_user.pop(user)
        return batch
