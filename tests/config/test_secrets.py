"""Sealing source passwords (bridge/config/secrets.py): out of the DSN, encrypted beside it."""

import pytest

from bridge.cdc.config import parse_source
from bridge.config.secrets import SEALED, Sealer, SealError

SOURCE = {
    "id": "shop",
    "kind": "postgres",
    "dsn": "postgresql://cdc:p%40ss%2Fw%C3%B6rd@db.example:5432/shop",
    "tables": ["public.orders"],
}


def test_a_sealed_source_keeps_no_password_and_opens_back_to_the_same_source() -> None:
    sealer = Sealer.from_secret("a cluster secret of some length")
    sealed = sealer.seal(SOURCE)
    assert sealed["dsn"] == "postgresql://cdc:****@db.example:5432/shop"
    assert "p@ss/wörd" not in repr(sealed)
    assert "p%40ss" not in repr(sealed)
    opened = sealer.open(sealed)
    assert SEALED not in opened
    assert parse_source(opened).connection().password == "p@ss/wörd"
    assert parse_source(opened) == parse_source(SOURCE)
    # Every replica with the same secret opens it; the token differs each time it is sealed.
    assert Sealer.from_secret("a cluster secret of some length").open(sealed) == opened
    assert sealer.seal(SOURCE)[SEALED] != sealed[SEALED]


def test_another_key_cannot_open_it_and_says_what_to_do() -> None:
    sealed = Sealer.from_secret("one secret, sixteen+").seal(SOURCE)
    with pytest.raises(SealError, match="need the same one"):
        Sealer.from_secret("another secret, 16+").open(sealed)


def test_a_dsn_without_a_password_is_left_alone() -> None:
    sealer = Sealer.from_secret("a cluster secret of some length")
    plain = {**SOURCE, "dsn": "postgresql://cdc@[::1]:5432/shop", "password_env": "PGPASS"}
    assert sealer.seal(plain) == plain
    assert sealer.open(plain) == plain


def test_while_the_secret_changes_the_previous_one_still_opens_and_says_so() -> None:
    old = Sealer.from_secret("the old cluster secret")
    sealed_before = old.seal(SOURCE)
    rotated = Sealer.from_secret("the new cluster secret", previous="the old cluster secret")
    opened, with_previous = rotated.open_checked(sealed_before)
    assert with_previous  # it needs sealing again
    assert parse_source(opened) == parse_source(SOURCE)
    sealed_now = rotated.seal(SOURCE)  # under the new secret only
    assert rotated.open_checked(sealed_now) == (opened, False)
    assert Sealer.from_secret("the new cluster secret").open(sealed_now) == opened
    with pytest.raises(SealError, match="--cluster-secret-previous"):
        old.open(sealed_now)
    with pytest.raises(SealError):
        Sealer.from_secret("the new cluster secret").open(sealed_before)
