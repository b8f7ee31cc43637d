"""Where `hstream-bridge run` leaves its embedded store's address for the resource commands.

The embedded store listens on a free loopback port unless `--store-listen` names one, so
`hstream-bridge tail` and the other resource commands could not know where it is. While the
bridge runs, `DATA_DIR/store/address` holds the store's URL (one line, `hstream://host:port`);
it is removed when the bridge stops. Without `--hstream-url` (or HSTREAM_BRIDGE_HSTREAM_URL),
the resource commands read it from their `--data-dir` (default `./data`, as `run`'s).
"""

import contextlib
import os
from pathlib import Path
from typing import Final

STORE_DIR: Final = "store"
ADDRESS_FILE: Final = "address"


def address_path(data_dir: Path) -> Path:
    """`DATA_DIR/store/address`."""
    return Path(data_dir) / STORE_DIR / ADDRESS_FILE


def write_address(data_dir: Path, url: str) -> Path:
    """Write `url` to the address file (atomically: a reader sees the old file or the new)."""
    path = address_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{ADDRESS_FILE}.{os.getpid()}")
    temporary.write_text(url + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def remove_address(data_dir: Path, url: str) -> None:
    """Remove the address file if it still holds `url` (another process may have replaced it)."""
    path = address_path(data_dir)
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8").strip() == url:
            path.unlink()


def read_address(data_dir: Path) -> str | None:
    """The URL in the address file, or None when there is none (no bridge running there)."""
    try:
        url = address_path(data_dir).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return url or None
