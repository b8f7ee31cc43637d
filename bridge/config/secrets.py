"""Source passwords sealed before they are written anywhere outside the process.

A source's DSN may carry its database password. The configuration stream is read by every
replica and by anyone who can read the stream (`hstream-bridge tail`), and the sources file is a
cache on disk. With `--cluster-secret` set, neither gets the password in clear: it is taken out
of the DSN (which keeps `****` in its place, as the API shows it) and stored beside it,
encrypted, as `dsn_password_sealed` (Fernet: AES-128-CBC with HMAC-SHA256, from the
`cryptography` package), under a key derived (HKDF-SHA256) from the secret, so every replica
with the same secret opens what another sealed. Without a secret there is no key the replicas
share, and the password is written as given (the bridge warns, per source): set the same
`--cluster-secret` on every replica (it needs no `--cluster-listen`), or use `password_env`,
which keeps the password out of every store. A password that cannot be opened (sealed under
another secret, or this replica has none) is reported with `SealError`, and the source gets the
DSN with `****`: it then fails to log in, and its status says the database refused it.

Changing the secret: `--cluster-secret-previous` names the one before. Passwords sealed under it
still open (`open_checked` says so, and the bridge asks for a configuration change, which seals
every password again under the current secret); nothing is sealed under it.
"""

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bridge.cdc.config import mask_dsn, with_password

SEALED: Final = "dsn_password_sealed"
_INFO: Final = b"hstream-bridge: sealed source passwords, v1"


class SealError(Exception):
    """A sealed password this key cannot open (sealed under another key, or damaged)."""


class Sealer:
    """Seals and opens the passwords of source documents (`model_dump(mode="json")` dicts)."""

    def __init__(self, key: bytes, previous: Sequence[bytes] = ()) -> None:
        if len(key) != 32 or any(len(k) != 32 for k in previous):
            raise ValueError("a sealing key is 32 bytes")
        self._fernet = Fernet(base64.urlsafe_b64encode(key))
        self._previous = [Fernet(base64.urlsafe_b64encode(k)) for k in previous]

    @classmethod
    def from_secret(cls, secret: str, previous: str | None = None) -> "Sealer":
        """The key every replica with this `--cluster-secret` derives alike; `previous` (the
        secret before it) only opens."""
        return cls(_derive(secret), [_derive(previous)] if previous else [])

    def seal(self, source: Mapping[str, Any]) -> dict[str, Any]:
        """The document with its DSN's password replaced by `****` and sealed beside it."""
        out = dict(source)
        dsn = out.get("dsn")
        if not isinstance(dsn, str):
            return out
        password = urlsplit(dsn).password
        if password is None:
            out.pop(SEALED, None)
            return out
        out["dsn"] = mask_dsn(dsn)
        out[SEALED] = self._fernet.encrypt(unquote(password).encode()).decode("ascii")
        return out

    def open(self, source: Mapping[str, Any]) -> dict[str, Any]:
        """The document with its sealed password back in the DSN; SealError when no key here
        can open it (the document is then usable as it is, with `****`)."""
        return self.open_checked(source)[0]

    def open_checked(self, source: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """`open`, and whether it took the previous secret's key (it needs sealing again)."""
        out = dict(source)
        token = out.pop(SEALED, None)
        dsn = out.get("dsn")
        if token is None or not isinstance(dsn, str):
            return out, False
        data = str(token).encode("ascii")
        for index, fernet in enumerate([self._fernet, *self._previous]):
            try:
                password = fernet.decrypt(data).decode()
            except (InvalidToken, UnicodeError):
                continue
            out["dsn"] = with_password(dsn, password)
            return out, index > 0
        raise SealError(
            f"source {out.get('id')!r}: its password was sealed under another "
            "--cluster-secret; replicas that share a configuration stream need the same "
            "one (the one before it goes in --cluster-secret-previous while it changes). Set "
            "the source's dsn (with the password) again, or use password_env"
        )


def _derive(secret: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO)
    return hkdf.derive(secret.encode())
