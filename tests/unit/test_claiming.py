"""ClaimPosition: when a claim goes on from the last job taken and when it starts at the head of the queue."""

from pgqueue.claiming import HEAD_EVERY, ClaimPosition


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rows(n: int, position: str) -> list[tuple[int, str]]:
    return [(i, position) for i in range(n)]


def test_a_full_claim_from_the_head_leaves_a_position_and_a_short_one_none() -> None:
    position = ClaimPosition(Clock())
    assert position.after is None  # nothing claimed yet: the head
    position.claimed(rows(10, "0,10,t"), asked=10, from_head=True, epoch=position.epoch)
    assert position.after == "0,10,t"
    position.claimed(rows(3, "0,13,t"), asked=10, from_head=True, epoch=position.epoch)
    assert position.after is None  # the backlog ran out: a worker keeping up claims from the head


def test_claims_after_the_position_move_it_on_and_an_empty_one_keeps_it() -> None:
    position = ClaimPosition(Clock())
    position.claimed(rows(10, "0,10,t"), asked=10, from_head=True, epoch=position.epoch)
    position.claimed(rows(10, "0,20,t"), asked=10, from_head=False, epoch=position.epoch)
    assert position.after == "0,20,t"
    position.claimed([], asked=10, from_head=False, epoch=position.epoch)  # then the head, for the rest
    assert position.after == "0,20,t"


def test_a_notification_or_time_sends_the_next_claim_to_the_head() -> None:
    clock = Clock()
    position = ClaimPosition(clock)
    position.claimed(rows(5, "3,5,t"), asked=5, from_head=True, epoch=position.epoch)
    position.forget()
    assert position.after is None
    position.claimed(rows(5, "3,10,t"), asked=5, from_head=True, epoch=position.epoch)
    clock.now += HEAD_EVERY * 0.9
    position.claimed(rows(5, "3,15,t"), asked=5, from_head=False, epoch=position.epoch)  # not renewing the time
    assert position.after == "3,15,t"
    clock.now += HEAD_EVERY * 0.2
    assert position.after is None


def test_a_claim_under_way_when_a_notification_came_sets_no_position() -> None:
    position = ClaimPosition(Clock())
    position.claimed(rows(5, "0,5,t"), asked=5, from_head=True, epoch=position.epoch)
    began = position.epoch
    position.forget()  # arrives while the next claim is at the database: it may not have seen the new job
    position.claimed(rows(5, "0,10,t"), asked=5, from_head=False, epoch=began)
    assert position.after is None
    position.claimed(rows(5, "0,15,t"), asked=5, from_head=True, epoch=began)
    assert position.after is None
    position.claimed(rows(5, "0,20,t"), asked=5, from_head=True, epoch=position.epoch)
    assert position.after == "0,20,t"
