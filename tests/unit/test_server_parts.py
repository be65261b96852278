"""The parts of a shard's service: GroupTable (who is present), RequestKeys (a request's keys), TierMembership."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hybrid_ps.errors import KeyListMissError, WireError
from hybrid_ps.placement.replicas import Placement
from hybrid_ps.placement.ring import HashRing
from hybrid_ps.protocol import wire
from hybrid_ps.protocol.keycache import reference_frame, signature
from hybrid_ps.server.cuts import Cuts
from hybrid_ps.server.groups import GroupTable
from hybrid_ps.server.membership import TierMembership
from hybrid_ps.server.replication import AppliedPushes
from hybrid_ps.server.request_keys import RequestKeys
from hybrid_ps.server.shard import Shard
from hybrid_ps.tables.optimizers import make_optimizer
from hybrid_ps.tier import TierView


def test_groups_of_a_tier_are_absent_until_they_join_and_gone_once_they_leave():
    groups = GroupTable(num_groups=2, present=False)
    assert groups.clock.dropped.all() and not groups.joined_any and not groups.all_gone()
    assert groups.join(0) == 0 and groups.joined_any and not groups.gone(0) and groups.gone(1)
    assert groups.waiting().tolist() == [True, False]
    groups.leave(0)
    assert groups.gone(0) and groups.clock.finished[0] and groups.all_gone()


def test_a_silent_group_is_dropped_and_rejoins_when_it_speaks():
    groups = GroupTable(num_groups=2, group_timeout=0.05)
    groups.clock.advance(1, 7)
    groups.start()
    time.sleep(0.08)
    groups.heard_from(1)
    assert groups.drop_silent() == [0] and groups.clock.dropped.tolist() == [True, False]
    assert groups.drop_silent() == []  # dropped once
    assert groups.heard_from(0) == 7  # back at the slowest running group's clock
    assert groups.heard_from(1) is None
    assert GroupTable(num_groups=1).drop_silent() == []  # no timeout: never


def _keys(ring: HashRing, shard: int, count: int) -> np.ndarray:
    candidates = np.arange(1, 100 * count, dtype=np.uint64)
    return np.sort(candidates[ring.shard_of(candidates) == shard][:count])


def _header(op, keys, flags=0, width=1):
    return wire.Header(op, 0, 1, 0, keys.size if keys is not None else 2, width, flags=flags)


def test_request_keys_are_checked_kept_referenced_and_forgotten():
    ring = HashRing(range(2), 16)
    checker = RequestKeys(shard_id=0, width=1, max_keys=1000, num_groups=1, placement=lambda: Placement(ring))
    mine, theirs = _keys(ring, 0, 5), _keys(ring, 1, 5)
    frame = memoryview(mine).cast("B")
    np.testing.assert_array_equal(checker.checked(b"a", frame, _header(wire.Op.PULL, mine), True), mine)
    with pytest.raises(WireError, match="width 2"):
        checker.checked(b"a", frame, _header(wire.Op.PULL, mine, width=2), True)
    with pytest.raises(WireError):
        checker.checked(b"a", memoryview(theirs).cast("B"), _header(wire.Op.PULL, theirs), True)
    checker.checked(b"a", frame, _header(wire.Op.PULL, mine, wire.FLAG_KEEP_KEYS), True)
    reference = memoryview(reference_frame(signature(mine), mine.size))
    by_ref = wire.Header(wire.Op.PULL, 0, 2, 0, mine.size, 1, flags=wire.FLAG_KEYS_BY_REF)
    np.testing.assert_array_equal(checker.checked(b"a", reference, by_ref, True), mine)
    with pytest.raises(KeyListMissError):
        checker.checked(b"b", reference, by_ref, True)  # another connection kept nothing
    checker.forget(b"a")
    with pytest.raises(KeyListMissError):
        checker.checked(b"a", reference, by_ref, True)


def test_membership_serves_a_dead_shards_ranges_and_stops_when_declared_dead_itself():
    ring = HashRing(range(3), 16)
    membership = TierMembership(shard_id=0, shard=Shard(1, make_optimizer("sgd", 0.1)),
                                groups=GroupTable(num_groups=1), placement=Placement(ring, 2))
    assert membership.evict(7) is False and not membership.placement.dead  # not on the ring: ignored
    assert membership.evict(2) is False and membership.placement.dead == {2}
    assert membership.evict(0) is True  # this shard: stop serving
    with pytest.raises(WireError, match="not a tier view"):
        membership.view(memoryview(b"{}"))
    view = memoryview(TierView({0: "tcp://a:1", 1: "tcp://b:1"}, 1).to_bytes())
    with pytest.raises(WireError, match="needs checkpoints"):
        membership.view(view)
    assert membership.maybe_reshard() is None


def test_a_cut_is_written_once_every_group_asked_and_refused_without_a_writer():
    ring = HashRing(range(1), 16)
    shard = Shard(1, make_optimizer("sgd", 0.1))
    shard.push(np.array([3, 5], np.uint64), np.ones((2, 1), np.float32))
    groups = GroupTable(num_groups=2)
    written = []
    cuts = Cuts(shard_id=0, shard=shard, groups=groups, placement=lambda: Placement(ring),
                writer=lambda part, clock, cut, base: written.append((part[0].tolist(), cut)))
    cuts.ask(b"g0", wire.Header(wire.Op.CHECKPOINT, 0, 1, 4))
    assert cuts.maybe_write() is None and not written  # group 1 has not asked
    cuts.ask(b"g1", wire.Header(wire.Op.CHECKPOINT, 1, 2, 4))
    done = cuts.maybe_write()
    assert done is not None and done.cut == 4 and done.error is None
    assert [identity for identity, _ in done.requests] == [b"g0", b"g1"]
    assert written == [([3, 5], 4)] and cuts.maybe_write() is None
    failing = Cuts(shard_id=0, shard=shard, groups=GroupTable(num_groups=1), placement=lambda: Placement(ring),
                   writer=lambda part, clock, cut, base: 1 / 0)
    failing.ask(b"g0", wire.Header(wire.Op.CHECKPOINT, 0, 1, 2))
    assert "ZeroDivisionError" in failing.maybe_write().error
    with pytest.raises(WireError, match="without a checkpoint directory"):
        Cuts(shard_id=0, shard=shard, groups=groups, placement=lambda: Placement(ring), writer=None).ask(
            b"g0", wire.Header(wire.Op.CHECKPOINT, 0, 1, 2))


def test_a_snapshot_cut_is_answered_at_once_and_told_written_once_its_child_wrote_it(tmp_path):
    """The shard's state at the cut is what the forked child writes, whatever the parent does meanwhile."""
    import zmq

    from hybrid_ps.server.snapshots import SnapshotWriter

    ring = HashRing([0], vnodes=8)
    shard = Shard(1, make_optimizer("sgd", 1.0))
    shard.push(np.array([3, 5], np.uint64), np.ones((2, 1), np.float32))
    out = tmp_path / "cut.npy"

    def write(part, clock, cut, base):
        time.sleep(0.3)
        np.save(out, part[1])

    snapshots = SnapshotWriter(poller=zmq.Poller())
    cuts = Cuts(shard_id=0, shard=shard, groups=GroupTable(num_groups=1), placement=lambda: Placement(ring),
                writer=write, snapshots=snapshots)
    cuts.ask(b"g0", wire.Header(wire.Op.CHECKPOINT, 0, 1, 4))
    taken = cuts.maybe_write()
    assert taken is not None and not taken.written and taken.cut == 4
    shard.push(np.array([3, 5], np.uint64), np.ones((2, 1), np.float32))  # after the cut: not in its file
    assert cuts.written() == [] and not out.exists()  # the child is still writing
    ended = cuts.written(block=True)
    assert [(c.cut, c.written, c.error) for c in ended] == [(4, True, None)]
    np.testing.assert_array_equal(np.load(out)[:, 0], [-1.0, -1.0])
    failing = Cuts(shard_id=0, shard=shard, groups=GroupTable(num_groups=1), placement=lambda: Placement(ring),
                   writer=lambda part, clock, cut, base: 1 / 0, snapshots=snapshots)
    failing.ask(b"g0", wire.Header(wire.Op.CHECKPOINT, 0, 1, 2))
    assert failing.maybe_write().error is None  # answered: the snapshot is taken
    assert "writer failed" in failing.written(block=True)[0].error


def test_the_cut_after_training_at_the_clock_of_the_last_cut_is_that_cut_unless_something_changed(tmp_path):
    """Written again, the same cut's file would land in its directory while a leader publishes it."""
    import zmq

    from hybrid_ps.server.snapshots import SnapshotWriter

    ring = HashRing([0], vnodes=8)
    shard = Shard(1, make_optimizer("sgd", 1.0))
    shard.push(np.array([3, 5], np.uint64), np.ones((2, 1), np.float32))

    def write(part, clock, cut, base):
        time.sleep(0.2)
        (tmp_path / f"cut-{cut}-{len(list(tmp_path.iterdir()))}").write_text("written")

    groups = GroupTable(num_groups=1)
    cuts = Cuts(shard_id=0, shard=shard, groups=groups, placement=lambda: Placement(ring), writer=write,
                snapshots=SnapshotWriter(poller=zmq.Poller()))
    cuts.ask(b"g0", wire.Header(wire.Op.CHECKPOINT, 0, 1, 6))
    periodic = cuts.maybe_write()
    groups.clock.advance(0, 6)
    groups.clock.finish(0)
    cuts.ask(b"g0", wire.Header(wire.Op.CHECKPOINT, 0, 2, wire.FINAL_CLOCK))
    final = cuts.maybe_write()  # while the periodic cut's file is still being written
    assert final.cut == periodic.cut == 6 and not final.written and final.requests[0][1].request_id == 2
    ended = cuts.written(block=True)  # told with it: both requests
    assert [header.request_id for _, header in ended[0].requests] == [1, 2] and ended[0].written
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == ["cut-6-0"]  # once
    cuts.ask(b"g0", wire.Header(wire.Op.CHECKPOINT, 0, 3, wire.FINAL_CLOCK))
    assert cuts.maybe_write().written  # unchanged, and nothing being written: told at once
    shard.push(np.array([3], np.uint64), np.ones((1, 1), np.float32))
    cuts.ask(b"g0", wire.Header(wire.Op.CHECKPOINT, 0, 4, wire.FINAL_CLOCK))
    assert not cuts.maybe_write().written and cuts.written(block=True)[0].cut == 6  # changed: written again
    assert len(list(tmp_path.iterdir())) == 2


def test_between_full_cuts_a_shard_writes_only_the_rows_it_changed():
    ring = HashRing([0], vnodes=8)
    shard = Shard(1, make_optimizer("sgd", 1.0), track_changes=True)
    placement = [Placement(ring)]
    written, evicted = [], []
    cuts = Cuts(shard_id=0, shard=shard, groups=GroupTable(num_groups=1), placement=lambda: placement[0],
                writer=lambda part, clock, cut, base: written.append((cut, base, part[0].tolist(),
                                                                      part[1][:, 0].tolist())), deltas=2,
                evict=evicted.append)

    def cut(clock, keys):
        shard.push(np.array(keys, np.uint64), np.ones((len(keys), 1), np.float32))
        cuts.ask(b"g0", wire.Header(wire.Op.CHECKPOINT, 0, clock, clock))
        assert cuts.maybe_write().error is None
        return written[-1]

    assert cut(10, [1, 2, 3])[:2] == (10, None)  # the first is full
    assert cut(20, [2, 5]) == (20, 10, [2, 5], [-2.0, -1.0])  # a delta on 10: only what changed, as it is now
    assert cut(30, [5]) == (30, 20, [5], [-2.0])
    assert cut(40, [1])[:2] == (40, None) and sorted(written[-1][2]) == [1, 2, 3, 5]  # two deltas, then full
    assert cut(50, [3])[:2] == (50, 40)
    placement[0] = Placement(ring, 1, dead=[])  # another placement (a failover, a restart): full
    assert cut(60, [3])[:2] == (60, None)
    assert evicted == [10, 40, 60]  # eviction runs at the full cuts only: a delta carries no deletions


def test_a_cut_is_written_once_every_shard_that_took_part_says_so():
    from hybrid_ps.worker.written_cuts import WrittenCuts

    cuts = WrittenCuts()
    cuts.told(1, 7, None)  # a shard's notice may come before the last ACK
    cuts.expect(7, [0, 1])
    assert cuts.state(7) is None
    cuts.told(0, 7, None)
    assert cuts.state(7) is True
    cuts.expect(9, [0, 1])
    cuts.told(0, 9, "disk full")
    assert cuts.state(9) == "disk full"
    cuts.expect(11, [0, 1])
    cuts.told(0, 11, None)
    cuts.shard_died(1)
    assert "shard 1 died" in cuts.state(11)
    assert cuts.state(13) is None, "a cut never taken is never written"


# -- AppliedPushes (primary-driven replication) ---------------------------------------------------------------


def _sequence(sequence: int, acked_below: int = 0, writer: int = 5) -> wire.PushSequence:
    return wire.PushSequence(writer=writer, sequence=sequence, acked_below=acked_below)


def test_a_push_is_new_once_and_then_only_its_keys_not_yet_applied_are():
    applied = AppliedPushes(num_groups=2)
    keys = np.array([1, 4, 9], np.uint64)
    assert applied.not_applied(0, _sequence(3), keys) is None  # never seen: apply it all
    applied.note(0, _sequence(3), keys)
    assert not applied.not_applied(0, _sequence(3), keys).any()  # the same copy again: nothing
    more = np.array([4, 7, 9, 12], np.uint64)  # a copy split otherwise after a failover
    assert applied.not_applied(0, _sequence(3), more).tolist() == [False, True, False, True]
    applied.note(0, _sequence(3), more)
    assert not applied.not_applied(0, _sequence(3), np.array([1, 7, 12], np.uint64)).any()
    assert applied.not_applied(1, _sequence(3), keys) is None  # another group's push 3 is another push
    assert applied.not_applied(0, _sequence(4), keys) is None


def test_pushes_below_the_acknowledged_mark_and_those_of_a_restarted_writer_are_forgotten():
    applied = AppliedPushes(num_groups=1)
    keys = np.array([2], np.uint64)
    for sequence in (1, 2, 3):
        applied.note(0, _sequence(sequence), keys)
    assert applied.remembered(0) == 3
    assert applied.not_applied(0, _sequence(4, acked_below=3), keys) is None and applied.remembered(0) == 1
    assert applied.not_applied(0, _sequence(3, acked_below=3), keys) is not None  # push 3 is still kept
    assert applied.not_applied(0, _sequence(3, writer=6), keys) is None  # a new leader: its push 3 is new
    assert applied.remembered(0) == 0
    with pytest.raises(WireError, match="group 1 out of range"):
        applied.not_applied(1, _sequence(1), keys)


def test_the_pushes_a_fill_holds_travel_with_it_and_are_not_applied_again_on_the_filled_shard():
    primary, filled = AppliedPushes(num_groups=2), AppliedPushes(num_groups=2)
    primary.note(0, _sequence(7), np.array([1, 4, 9], np.uint64))
    primary.note(1, _sequence(3, writer=8), np.array([4, 5], np.uint64))
    chunk = np.array([4, 5, 9, 11], np.uint64)
    filled.take(primary.among(chunk))
    assert not filled.not_applied(0, _sequence(7), np.array([4, 9], np.uint64)).any()
    assert filled.not_applied(0, _sequence(7), np.array([1], np.uint64)).all()  # key 1 was not in the chunk
    assert not filled.not_applied(1, _sequence(3, writer=8), np.array([4, 5], np.uint64)).any()
    assert primary.among(np.array([2], np.uint64)).size == 0
    with pytest.raises(WireError, match="cut short"):
        filled.take(primary.among(chunk)[:-1])
