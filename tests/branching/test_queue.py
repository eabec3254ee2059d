"""DomainQueue: pops exactly the lowest scores, keeps every other domain intact, reconciles fields."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from branching.queue import DomainQueue, get_group, put_group


@dataclass
class Rows:
    score: torch.Tensor
    ident: torch.Tensor
    extra: dict

    def fields(self) -> dict[str, torch.Tensor]:
        out = {"score": self.score, "ident": self.ident}
        put_group(out, "x", self.extra)
        return out

    @staticmethod
    def build(fields: dict[str, torch.Tensor]) -> "Rows":
        return Rows(fields["score"], fields["ident"], get_group(fields, "x"))


def test_pops_the_lowest_scores_and_keeps_the_rest() -> None:
    gen = torch.Generator().manual_seed(0)
    queue: DomainQueue[Rows] = DomainQueue(Rows.build)
    reference: dict[int, float] = {}
    next_id = 0
    for step in range(200):
        m = int(torch.randint(0, 40, (1,), generator=gen))
        scores = torch.randn(m, generator=gen)
        ids = torch.arange(next_id, next_id + m)
        next_id += m
        # a per-domain payload that must travel with its domain (names may contain '/')
        queue.push(Rows(scores, ids, {"/layer/0": ids.double().reshape(m, 1).expand(m, 3) * 2}))
        reference.update(zip(ids.tolist(), scores.tolist()))
        k = int(torch.randint(0, 30, (1,), generator=gen))
        out = queue.pop_worst(k)
        expected = sorted(reference.values())[: min(k, len(reference))]
        assert sorted(out.score.tolist()) == expected
        for i, s in zip(out.ident.tolist(), out.score.tolist()):
            assert reference.pop(i) == s
        assert torch.equal(out.extra["/layer/0"], out.ident.double().reshape(-1, 1).expand(-1, 3) * 2)
        assert len(queue) == len(reference)
        if reference:
            assert queue.worst_score() == min(reference.values())
    rest = queue.pop_worst(10 ** 6)
    assert sorted(rest.ident.tolist()) == sorted(reference) and len(queue) == 0


def test_fields_missing_on_one_side_are_dropped_or_zero_filled() -> None:
    queue: DomainQueue[Rows] = DomainQueue(Rows.build, zero_fill=lambda key: key.startswith("x/beta"))
    one = torch.ones(2)
    queue.push(Rows(one, torch.tensor([0, 1]), {"alpha": one.clone(), "beta": one.clone()}))
    queue.push(Rows(one, torch.tensor([2, 3]), {"gamma": one.clone()}))
    out = queue.pop_worst(4)
    assert set(out.extra) == {"beta"}                     # alpha and gamma: not on every domain
    assert out.extra["beta"][out.ident.argsort()].tolist() == [1.0, 1.0, 0.0, 0.0]
    # once empty, the queue takes the next batch's fields as they are
    queue.push(Rows(one, torch.tensor([4, 5]), {"alpha": one.clone()}))
    assert set(queue.pop_worst(1).extra) == {"alpha"}


def test_a_queue_at_its_memory_budget_says_full_and_the_search_stops_with_unknown() -> None:
    from branching.bab import BaBOptions, BaBOutcome, stop_reason

    queue: DomainQueue[Rows] = DomainQueue(Rows.build, max_bytes=100 * 16)   # ~100 rows of 16 bytes
    for start in range(0, 90, 10):
        queue.push(Rows(torch.zeros(10, dtype=torch.float64), torch.arange(start, start + 10), {}))
    assert not queue.full
    outcome = BaBOutcome("unsat")

    class Never:
        def expired(self) -> bool:
            return False

    assert not stop_reason(outcome, Never(), queue, BaBOptions())
    queue.push(Rows(torch.zeros(20, dtype=torch.float64), torch.arange(90, 110), {}))
    assert queue.full and len(queue) == 110          # nothing is lost: the push still lands
    assert stop_reason(outcome, Never(), queue, BaBOptions())
    assert outcome.status == "unknown" and "memory" in outcome.notes[-1]


def test_past_doubling_the_queue_grows_once_to_its_whole_allowance() -> None:
    """Growing to just what a push needs would copy the whole queue on every later push."""
    queue: DomainQueue[Rows] = DomainQueue(Rows.build, max_bytes=1000 * 16)   # 1000 rows of 16 bytes
    allocations = []
    for start in range(0, 990, 30):
        before = queue._store.get("score")
        queue.push(Rows(torch.zeros(30, dtype=torch.float64), torch.arange(start, start + 30), {}))
        if queue._store["score"] is not before:
            allocations.append(queue._store["score"].shape[0])
    assert allocations == [64, 128, 256, 512, 1000]
    assert not queue.full
    queue.push(Rows(torch.zeros(30, dtype=torch.float64), torch.arange(990, 1020), {}))
    assert queue.full and len(queue) == 1020


def test_a_round_that_would_grow_the_queue_past_the_deadline_is_not_begun() -> None:
    from branching.bab import BaBOptions, BaBOutcome, stop_reason

    queue: DomainQueue[Rows] = DomainQueue(Rows.build)
    queue.push(Rows(torch.zeros(64, dtype=torch.float64), torch.arange(64), {}))
    assert queue.growth_seconds(0) == 0.0 and queue.growth_seconds(1) > 0.0

    class Left:
        def __init__(self, seconds: float) -> None:
            self.seconds = seconds

        def expired(self) -> bool:
            return False

        def remaining(self) -> float:
            return self.seconds

    needed = queue.growth_seconds(64)
    outcome = BaBOutcome("unsat")
    assert not stop_reason(outcome, Left(10 * needed), queue, BaBOptions(), 0.0, 64)
    assert stop_reason(outcome, Left(0.5 * needed), queue, BaBOptions(), 0.0, 64)
    assert outcome.status == "timeout"
