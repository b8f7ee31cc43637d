"""SWIM membership (bridge/cluster/membership.py) on real UDP sockets on 127.0.0.1, several members
in one process. Every wait polls a condition with a bound; timings are printed (pytest -s)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
import pytest

from bridge.cluster import Member, Membership, MembershipConfig
from bridge.cluster.membership import _derive_key, _seal

SECRET = b"0123456789abcdef-cluster-secret"


def config(local_id: str, peers: Sequence[str] = (), **overrides: Any) -> MembershipConfig:
    values: dict[str, Any] = {"secret": SECRET, **overrides}
    return MembershipConfig(local_id=local_id, listen="127.0.0.1:0", peers=list(peers), **values)


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition` until it holds; the seconds it took, or AssertionError after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def status_of(member: Membership, member_id: str) -> str | None:
    for seen in member.members():
        if seen.id == member_id:
            return seen.status
    return None


def all_alive(members: Sequence[Membership]) -> bool:
    ids = {m.local_id for m in members}
    return all({seen.id for seen in m.alive()} == ids for m in members)


@contextlib.asynccontextmanager
async def cluster(count: int, **overrides: Any) -> AsyncIterator[list[Membership]]:
    """`count` members joining through the first one; every one closed afterwards."""
    async with contextlib.AsyncExitStack() as stack:
        seed = await stack.enter_async_context(Membership(config("m0", **overrides)))
        members = [seed]
        for index in range(1, count):
            member = Membership(config(f"m{index}", [seed.address], **overrides))
            members.append(await stack.enter_async_context(member))
        yield members


def packet(body: dict[str, Any], secret: bytes = SECRET) -> bytes:
    return _seal(_derive_key(secret), orjson.dumps(body))


def ping_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "type": "ping",
        "seq": 7,
        "ts": time.time(),
        "from": {"status": "alive", "id": "prober", "inc": 1, "addr": "127.0.0.1:9", "meta": {}},
        "updates": [],
    }
    body.update(changes)
    return body


async def test_three_members_join_through_one_seed_and_metadata_reaches_all() -> None:
    started = time.monotonic()
    async with cluster(3) as members:
        joined = await wait_until(lambda: all_alive(members), 2.0, "3 members alive everywhere")
        print(f"\n3 members joined in {time.monotonic() - started:.3f} s")
        members[2].update_metadata({"http": "127.0.0.1:8080", "config_version": 7})

        def spread() -> bool:
            return all(
                seen.metadata.get("config_version") == 7
                for m in members
                for seen in m.members()
                if seen.id == "m2"
            )

        took = await wait_until(spread, 3.0, "metadata of m2 on every member")
        print(f"metadata reached all 3 in {took:.3f} s (join poll {joined:.3f} s)")


async def test_killed_member_is_dead_everywhere_within_five_seconds() -> None:
    async with cluster(3) as members:
        await wait_until(lambda: all_alive(members), 2.0, "3 members alive")
        await members[1]._crash()
        took = await wait_until(
            lambda: all(status_of(m, "m1") == "dead" for m in (members[0], members[2])),
            5.0,
            "crashed m1 dead on m0 and m2",
        )
        print(f"\ncrashed member dead everywhere in {took:.3f} s")
        assert not any(seen.left for seen in members[0].members() if seen.id == "m1")


async def test_graceful_leave_is_seen_at_once() -> None:
    async with cluster(3) as members:
        await wait_until(lambda: all_alive(members), 2.0, "3 members alive")
        await members[1].aclose()
        took = await wait_until(
            lambda: all(status_of(m, "m1") == "dead" for m in (members[0], members[2])),
            1.0,
            "m1 that left dead on m0 and m2",
        )
        print(f"\nleave seen everywhere in {took:.3f} s")
        assert all(seen.left for seen in members[0].members() if seen.id == "m1")


async def test_member_back_with_same_id_after_death_is_alive_again() -> None:
    async with cluster(3) as members:
        await wait_until(lambda: all_alive(members), 2.0, "3 members alive")
        await members[2]._crash()
        await wait_until(lambda: status_of(members[0], "m2") == "dead", 5.0, "m2 dead")
        changes: list[Member] = []
        members[0].on_change = changes.append
        async with Membership(config("m2", [members[0].address]), {"life": 2}) as back:
            await wait_until(lambda: all_alive([members[0], members[1], back]), 3.0, "m2 back")
            seen = next(m for m in members[1].members() if m.id == "m2")
            assert seen.address == back.address
            assert seen.metadata == {"life": 2}
            assert any(c.id == "m2" and c.status == "alive" for c in changes)


async def test_member_with_other_secret_stays_out_and_drops_are_counted() -> None:
    async with cluster(2) as members:
        stranger_config = MembershipConfig(
            local_id="stranger",
            listen="127.0.0.1:0",
            peers=[members[0].address],
            secret=b"another-secret-of-16+bytes",
            join_retry=0.2,
        )
        async with Membership(stranger_config) as stranger:
            # The stranger keeps pinging its seed while nobody answers it.
            await wait_until(
                lambda: members[0].stats["packets_dropped_bad_mac"] >= 5, 5.0, "bad MAC drops"
            )
            assert [m.id for m in stranger.members()] == ["stranger"]
            assert all("stranger" not in {s.id for s in m.members()} for m in members)
            assert stranger.stats["packets_dropped_bad_mac"] == 0  # nobody answered it
            assert all_alive(members)


async def test_garbage_packets_are_dropped_counted_and_member_keeps_answering() -> None:
    async with cluster(2) as members:
        await wait_until(lambda: all_alive(members), 2.0, "2 members alive")
        target = members[0]
        host, port = target.address.rsplit(":", 1)
        before = dict(target.stats)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.bind(("127.0.0.1", 0))
            raw.settimeout(2.0)
            garbage = [
                os.urandom(200),
                orjson.dumps(ping_body()),  # valid JSON, no MAC
                packet({"v": 1})[:32] + b"not json at all",  # MAC of another body
                _seal(_derive_key(SECRET), b"\xff not json"),  # valid MAC, body not JSON
                packet({"v": 1, "type": "ping"}),  # valid MAC, JSON of the wrong shape
                packet(ping_body(updates=[{"status": "alive", "id": ""}])),  # bad update
                packet(ping_body(ts=time.time() - 120)),  # replayed: old timestamp
                packet(ping_body(ts=time.time() + 120)),  # from the future
                packet(ping_body(padding="x" * 9000)),  # oversized
                b"",
            ]
            for item in garbage:
                raw.sendto(item, (host, int(port)))

            def counted() -> bool:
                after = target.stats
                return (
                    after["packets_dropped_bad_mac"] - before["packets_dropped_bad_mac"] >= 4
                    and after["packets_dropped_malformed"] - before["packets_dropped_malformed"]
                    >= 3
                    and after["packets_dropped_stale"] - before["packets_dropped_stale"] >= 2
                    and after["packets_dropped_oversized"] - before["packets_dropped_oversized"]
                    >= 1
                )

            await wait_until(counted, 2.0, "every garbage packet counted")
            assert "prober" not in {m.id for m in target.members()}
            # A well-formed ping from the same socket still gets an ack.
            raw.sendto(packet(ping_body(seq=4242)), (host, int(port)))
            reply = await asyncio.get_running_loop().run_in_executor(None, raw.recv, 9000)
        ack = orjson.loads(reply[32:])
        assert ack["type"] == "ack"
        assert ack["seq"] == 4242
        assert ack["from"]["id"] == "m0"
        probes = target.stats["probes"]
        await wait_until(lambda: target.stats["probes"] >= probes + 3, 3.0, "3 more probes")
        # The signed ping introduced a member "prober" (it holds the secret) that never answers.
        assert all({"m0", "m1"} <= {seen.id for seen in m.alive()} for m in members)


NEW_SECRET = b"fedcba9876543210-the-new-secret"


async def test_while_the_secret_changes_packets_signed_with_the_previous_one_are_taken() -> None:
    """A member given `previous_secrets` answers a ping signed with the old secret, and signs
    its ack with the new one; a member without it drops the same ping."""
    async with (
        Membership(config("rotated", secret=NEW_SECRET, previous_secrets=[SECRET])) as rotated,
        Membership(config("strict", secret=NEW_SECRET)) as strict,
    ):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.bind(("127.0.0.1", 0))
            raw.settimeout(2.0)
            for member in (rotated, strict):
                host, port = member.address.rsplit(":", 1)
                raw.sendto(packet(ping_body(seq=77), secret=SECRET), (host, int(port)))
            reply = await asyncio.get_running_loop().run_in_executor(None, raw.recv, 9000)
            await wait_until(
                lambda: strict.stats["packets_dropped_bad_mac"] >= 1, 2.0, "the strict drop"
            )
        assert reply == _seal(_derive_key(NEW_SECRET), reply[32:])  # signed with the new one
        assert orjson.loads(reply[32:])["from"]["id"] == "rotated"
        assert rotated.stats["packets_dropped_bad_mac"] == 0


def test_a_short_previous_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        config("a", previous_secrets=[b"short"])


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        MembershipConfig(local_id="a", listen="127.0.0.1:0", peers=[], secret=b"short")


def test_oversized_or_non_json_metadata_is_refused() -> None:
    with pytest.raises(ValueError, match="more than 512"):
        Membership(config("a"), {"blob": "x" * 600})
    member = Membership(config("a"), {"ok": True})
    with pytest.raises(ValueError, match="more than 512"):
        member.update_metadata({"blob": "x" * 600})
    with pytest.raises(ValueError, match="JSON object"):
        member.update_metadata({"when": object()})
    assert member.members()[0].metadata == {"ok": True}


def test_bad_addresses_are_refused() -> None:
    with pytest.raises(ValueError, match="host:port"):
        config("a", ["no-port"])
    with pytest.raises(ValueError, match="advertise"):
        Membership(MembershipConfig(local_id="a", listen="0.0.0.0:0", peers=[], secret=SECRET))


async def test_brief_silence_is_suspected_then_refuted_never_dead() -> None:
    # A longer suspicion than the default, so that a slow CI machine cannot turn a refutation
    # that is merely late into a death; the silence is shorter than it.
    async with cluster(3, suspect_timeout=4.0) as members:
        await wait_until(lambda: all_alive(members), 2.0, "3 members alive")
        seen: list[Member] = []
        members[0].on_change = seen.append
        members[2].on_change = seen.append
        incarnation = members[1].members()[1].incarnation
        members[1]._pause(1.5)
        await wait_until(
            lambda: any(m.id == "m1" and m.status == "suspect" for m in seen), 3.0, "suspected"
        )
        took = await wait_until(lambda: all_alive(members), 4.0, "m1 refuted")
        print(f"\nsuspicion refuted {took:.3f} s after it was seen")
        assert not any(m.id == "m1" and m.status == "dead" for m in seen)
        assert members[1].stats["refutations"] >= 1
        assert next(m for m in members[0].members() if m.id == "m1").incarnation > incarnation


async def test_higher_incarnation_wins_when_two_members_claim_one_id() -> None:
    async with cluster(2) as members:
        await wait_until(lambda: all_alive(members), 2.0, "2 members alive")
        async with Membership(config("m1", [members[0].address])) as twin:
            await wait_until(
                lambda: any(
                    m.id == "m1" and m.address == twin.address for m in members[0].members()
                ),
                3.0,
                "the later m1 (higher incarnation) wins",
            )
            assert members[0].stats["id_conflicts"] >= 1


async def test_packets_stay_under_the_budget_with_large_metadata() -> None:
    meta = {"blob": "y" * 450}
    async with cluster(6) as members:
        for member in members:
            member.update_metadata(meta)
        await wait_until(
            lambda: all(
                all(seen.metadata == meta for seen in m.members()) and len(m.alive()) == 6
                for m in members
            ),
            8.0,
            "large metadata everywhere",
        )
        assert max(m._largest_sent for m in members) <= 1400


async def test_ten_members_converge_and_detect_a_death() -> None:
    started = time.monotonic()
    async with cluster(10) as members:
        await wait_until(lambda: all_alive(members), 10.0, "10 members alive everywhere")
        print(f"\n10 members converged in {time.monotonic() - started:.3f} s")
        members[0].update_metadata({"v": 2})
        took = await wait_until(
            lambda: all(
                next(s for s in m.members() if s.id == "m0").metadata == {"v": 2} for m in members
            ),
            5.0,
            "metadata on all 10",
        )
        print(f"metadata reached all 10 in {took:.3f} s")
        await members[5]._crash()
        others = [m for m in members if m is not members[5]]
        took = await wait_until(
            lambda: all(status_of(m, "m5") == "dead" for m in others), 5.0, "m5 dead on all 9"
        )
        print(f"crashed member dead on all 9 others in {took:.3f} s")


async def test_seed_that_comes_up_later_is_joined() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        seed_address = f"127.0.0.1:{probe.getsockname()[1]}"
    async with Membership(config("early", [seed_address], join_retry=0.5)) as early:
        await wait_until(lambda: early.stats["packets_sent"] >= 2, 2.0, "pings to nowhere")
        assert [m.id for m in early.members()] == ["early"]
        seed_config = MembershipConfig(
            local_id="late-seed", listen=seed_address, peers=[], secret=SECRET
        )
        async with Membership(seed_config) as seed:
            took = await wait_until(lambda: all_alive([early, seed]), 3.0, "joined the seed")
            print(f"\njoined a seed that came up late {took:.3f} s after it did")


async def test_member_wrongly_declared_dead_comes_back_everywhere() -> None:
    async with cluster(3) as members:
        await wait_until(lambda: all_alive(members), 2.0, "3 members alive")
        members[1]._pause(3.5)  # longer than the suspicion: the others declare it dead
        await wait_until(
            lambda: all(status_of(m, "m1") == "dead" for m in (members[0], members[2])),
            5.0,
            "silent m1 dead",
        )
        took = await wait_until(lambda: all_alive(members), 10.0, "m1 and its view healed")
        print(f"\nview healed {took:.3f} s after m1 was declared dead")


def test_suspicion_timeout_shrinks_with_confirmations() -> None:
    from bridge.cluster.membership import _Suspicion

    suspicion = _Suspicion(started=0.0, shortest=1.5, longest=3.0, expected=3, confirmed=set())
    timeouts = []
    for confirmer in ("a", "b", "c", "d"):
        timeouts.append(suspicion.timeout())
        suspicion.confirmed.add(confirmer)
    assert timeouts[0] == 3.0
    assert timeouts == sorted(timeouts, reverse=True)
    assert suspicion.timeout() == 1.5
    alone = _Suspicion(started=0.0, shortest=1.5, longest=3.0, expected=0, confirmed=set())
    assert alone.timeout() == 1.5
