"""`python -m bridge.hstream.store --listen HOST:PORT --data-dir DIR`: the store on its own.

`hstream-bridge store` is the same command (it uses `add_arguments` and `run` from here).
Add `--tls-cert FILE --tls-key FILE` to serve TLS (`hstreams://`), and `--tls-client-ca FILE`
to require client certificates signed by that CA.
"""

import argparse
import asyncio
import os
from pathlib import Path

from bridge.hstream.store.server import check_store_listen, serve, server_credentials


def add_arguments(parser: argparse.ArgumentParser, *, data_dir_default: Path | None) -> None:
    parser.add_argument("--listen", default="127.0.0.1:6570", help="HOST:PORT to bind")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=data_dir_default,
        required=data_dir_default is None,
        help="where the data lives",
    )
    parser.add_argument("--advertised-host", default=None, help="host that lookups answer")
    parser.add_argument("--max-record-bytes", type=int, default=1 << 20)
    parser.add_argument("--username", default=None, help="require Basic auth with this user")
    parser.add_argument(
        "--password",
        default=os.environ.get("HSTREAM_STORE_PASSWORD"),
        help="its password (default: env HSTREAM_STORE_PASSWORD)",
    )
    parser.add_argument("--tls-cert", type=Path, default=None, help="server certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, default=None, help="its private key (PEM)")
    parser.add_argument(
        "--tls-client-ca", type=Path, default=None, help="require client certs from this CA"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
    )


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Check the TLS and listen options, then serve until SIGTERM/SIGINT (exit 0).

    A listen address beyond loopback needs Basic auth (--username and --password) or TLS
    (--tls-cert and --tls-key), as the HTTP API needs a token there.
    """
    from bridge.logs import setup_logging

    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    if args.tls_cert is not None:
        try:  # unreadable or non-PEM files: one line now rather than a traceback later
            server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
        except ValueError as exc:
            parser.error(str(exc))
    if args.username is not None and not args.password:
        parser.error("--username needs --password (or env HSTREAM_STORE_PASSWORD)")
    authenticated = args.tls_cert is not None or args.username is not None
    try:
        check_store_listen(args.listen, authenticated=authenticated)
    except ValueError as exc:
        parser.error(str(exc))
    setup_logging(args.log_level.lower())
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


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: `--list` must not quietly mean `--listen`.
    parser = argparse.ArgumentParser(prog="python -m bridge.hstream.store", allow_abbrev=False)
    add_arguments(parser, data_dir_default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run(parser, parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
