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
"""

import base64
from collections.abc import Mapping
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

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a sealing key is 32 bytes")
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    @classmethod
    def from_secret(cls, secret: str) -> "Sealer":
        """The key every replica with this `--cluster-secret` derives alike."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO)
        return cls(hkdf.derive(secret.encode()))

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
        """The document with its sealed password back in the DSN; SealError when this key
        cannot open it (the document is then usable as it is, with `****`)."""
        out = dict(source)
        token = out.pop(SEALED, None)
        dsn = out.get("dsn")
        if token is None or not isinstance(dsn, str):
            return out
        try:
            password = self._fernet.decrypt(str(token).encode("ascii")).decode()
        except (InvalidToken, UnicodeError) as exc:
            raise SealError(
                f"source {out.get('id')!r}: its password was sealed under another "
                "--cluster-secret; replicas that share a configuration stream need the same "
                "one. Set the source's dsn (with the password) again, or use password_env"
            ) from exc
        out["dsn"] = with_password(dsn, password)
        return out
