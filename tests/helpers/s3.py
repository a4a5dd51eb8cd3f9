"""An S3-compatible server for tests: moto's server mode as a real process on loopback (the
coordinator reaches it by `s3_endpoint_url`, like any S3 service). With `auth`, it checks
signatures against IAM keys it issues here (so wrong credentials are refused)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from tests.helpers.procs import free_port

BUCKET = "cf-outputs"
REGION = "us-east-1"


@dataclass
class S3Server:
    url: str
    proc: subprocess.Popen[bytes]
    key_id: str = "testing"
    secret: str = "testing"

    def client(self, secret: str | None = None) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=secret or self.secret,
            config=Config(signature_version="s3v4"),
        )

    def env(self, secret: str | None = None) -> dict[str, str]:
        """The AWS environment a coordinator reads its credentials from."""
        return {
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": secret or self.secret,
            "AWS_DEFAULT_REGION": REGION,
        }

    def objects(self) -> dict[str, bytes]:
        s3 = self.client()
        listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
        return {o["Key"]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}

    def pending_uploads(self) -> list[str]:
        return [
            u["Key"] for u in self.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        ]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_s3(log_dir: Path, auth: bool = False) -> S3Server:
    port = free_port()
    env = {**os.environ}
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "4"  # the IAM set-up and the bucket below
    log = open(log_dir / "moto.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    log.close()
    server = S3Server(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{server.url}/moto-api/", timeout=1).close()
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"moto server did not start (see {log_dir / 'moto.log'})"
                ) from None
            time.sleep(0.1)
    if auth:
        iam = boto3.client(
            "iam", endpoint_url=server.url, region_name=REGION,
            aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap",
        )  # fmt: skip
        iam.create_user(UserName="comfyfleet")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="comfyfleet", PolicyName="s3", PolicyDocument=json.dumps(policy)
        )
        key = iam.create_access_key(UserName="comfyfleet")["AccessKey"]
        server.key_id, server.secret = key["AccessKeyId"], key["SecretAccessKey"]
    server.client().create_bucket(Bucket=BUCKET)
    return server
