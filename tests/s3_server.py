"""A real S3 server for the tests: moto in server mode on 127.0.0.1 (HTTP, a free port).

`s3_env(monkeypatch)` starts it and points the standard AWS variables at it (fake keys,
AWS_ENDPOINT_URL, a region, one attempt per request), exactly as a user of an S3-compatible
store would: the code under test finds the server only through those variables.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass


@dataclass
class S3Server:
    endpoint: str
    server: object

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []))

    def multipart_uploads(self, bucket: str) -> list:
        return self.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])

    def stop(self) -> None:
        self.server.stop()


def start() -> S3Server:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return S3Server(f"http://{host}:{port}", server)


def aws_env(endpoint: str, tmp) -> dict[str, str]:
    """The standard variables a user sets for an S3-compatible store."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_MAX_ATTEMPTS": "1",  # no retries: a wrong endpoint fails at once
        "AWS_CONFIG_FILE": str(tmp / "aws-config"),  # nothing from the machine's ~/.aws
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "aws-credentials"),
    }


def closed_port() -> int:
    """A local port nothing listens on (a wrong endpoint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_sigint() -> None:
    """preexec_fn of a child that is sent Ctrl-C: SIGINT's default action even when the test
    process ignores it (a background job of a non-interactive shell does), as in a terminal."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
