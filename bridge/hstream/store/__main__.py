"""`python -m bridge.hstream.store --listen HOST:PORT --data-dir DIR`: the store on its own."""

import argparse
import asyncio
import logging
import os
from pathlib import Path

from bridge.hstream.store.server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.hstream.store")
    parser.add_argument("--listen", default="127.0.0.1:6570", help="HOST:PORT to bind")
    parser.add_argument("--data-dir", type=Path, required=True, help="where the data lives")
    parser.add_argument("--advertised-host", default=None, help="host that lookups answer")
    parser.add_argument("--max-record-bytes", type=int, default=1 << 20)
    parser.add_argument("--username", default=None)
    parser.add_argument("--password", default=os.environ.get("HSTREAM_STORE_PASSWORD"))
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    asyncio.run(
        serve(
            args.listen,
            args.data_dir,
            advertised_host=args.advertised_host,
            max_record_bytes=args.max_record_bytes,
            username=args.username,
            password=args.password,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
