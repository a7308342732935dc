from __future__ import annotations

from bot.engine.fairqueue import FairQueue


def user_of(item: str) -> str:
    return item[0]


def filled(*items: str) -> FairQueue[str]:
    queue: FairQueue[str] = FairQueue()
    for item in items:
        queue.push(user_of(item), item)
    return queue


def take_one(queue: FairQueue[str]) -> list[str]:
    return queue.take(user_of, fits=lambda batch, item: False)


def test_service_order_interleaves_users() -> None:
    queue = filled("A1", "A2", "A3", "B1", "C1", "C2")
    assert list(queue) == ["A1", "B1", "C1", "A2", "C2", "A3"]
    assert queue.position("C2") == 4 and queue.position("Z9") is None


def test_least_recently_served_user_goes_first() -> None:
    queue = filled("A1", "A2", "B1")
    assert take_one(queue) == ["A1"]
    queue.push("C", "C1")  # a newcomer waits behind B (not yet served) but not behind A (just served)
    assert list(queue) == ["B1", "C1", "A2"]
    assert take_one(queue) == ["B1"]
    queue.push("B", "B2")
    assert list(queue) == ["C1", "A2", "B2"]


def test_burst_of_one_user_does_not_starve_a_late_user() -> None:
    queue = filled(*(f"A{index}" for index in range(10)))
    take_one(queue)
    queue.push("B", "B1")
    assert take_one(queue) == ["B1"]
    assert take_one(queue) == ["A1"]


def test_take_gathers_fitting_items_in_service_order() -> None:
    queue = filled("A1", "Ax", "B1", "Bx", "C1")
    batch = queue.take(user_of, fits=lambda batch, item: item[1] == batch[0][1] and len(batch) < 2)
    assert batch == ["A1", "B1"]
    assert list(queue) == ["C1", "Ax", "Bx"]
    assert len(queue) == 3 and queue.pending_for("A") == 1


def test_remove() -> None:
    queue = filled("A1", "B1")
    assert queue.remove("A", "A1") and not queue.remove("A", "A1")
    assert list(queue) == ["B1"] and queue.pending_for("A") == 0
