"""`python -m bridge.hstream.store --listen HOST:PORT --data-dir DIR`: the store on its own.

Add `--tls-cert FILE --tls-key FILE` to serve TLS (`hstreams://`), and `--tls-client-ca FILE`
to require client certificates signed by that CA.
"""

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
    parser.add_argument("--tls-cert", type=Path, default=None, help="server certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, default=None, help="its private key (PEM)")
    parser.add_argument(
        "--tls-client-ca", type=Path, default=None, help="require client certs from this CA"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    for path in (args.tls_cert, args.tls_key, args.tls_client_ca):
        if path is not None and not path.is_file():
            parser.error(f"no such file: {path}")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    asyncio.run(
        serve(
            args.listen,
            args.data_dir,
            advertised_host=args.advertised_host,
            max_record_bytes=args.max_record_bytes,
            username=args.username,
            password=args.password,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            tls_client_ca_file=args.tls_client_ca,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
