"""Outputs in S3-compatible object storage (`output_store = "s3://BUCKET/PREFIX"`).

Agents upload straight to the bucket with presigned URLs (one PUT up to `s3_part_size`, a
multipart upload above it); the coordinator never carries the bytes, but it verifies each file
(size and sha256, read back from the bucket) before the job may complete, exactly as it does for
files on its own disk. Objects live under `PREFIX/TENANT/JOB/ATTEMPT/NAME`; downloads are
redirects to presigned GETs that last `s3_url_ttl_s`. A multipart upload an agent did not finish
(it was killed) is found again by its key, so the next plan asks only for the missing parts.

The client is boto3, its calls run in worker threads: presigning is local computation, and the
coordinator makes only a few calls per output file. (aiobotocore pins exact botocore versions,
which fights with every other AWS package; boto3 is the reference client.) Bucket, endpoint and
region come from the config, credentials from the usual AWS environment variables or files;
none of them is logged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.errors import Conflict, CoordinatorError, StoreUnavailable
from comfyfleet.coordinator.outputs import ChunkResult, ChunkSink, OutputFiles
from comfyfleet.shared import protocol as p
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.settings import ConfigError

SCHEME = "s3://"
MIN_PART = 5 << 20  # S3's smallest part (all but the last)
READ_BLOCK = 1 << 20
# What says the store will not take our requests, as opposed to a passing fault.
REFUSALS = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "NoSuchBucket",
        "SignatureDoesNotMatch",
        "401",
        "403",
    }
)


class OutputStoreRefused(CoordinatorError):
    """Object storage refuses the coordinator (credentials, bucket): the job fails."""

    status = 502
    code = "output_store_refused"


@dataclass(frozen=True, slots=True)
class Bucket:
    name: str
    prefix: str  # "" or without a trailing slash


def parse_location(value: str) -> Bucket:
    """`s3://BUCKET/PREFIX` (PREFIX optional); ConfigError naming `output_store` otherwise."""
    if not value.startswith(SCHEME):
        raise ConfigError("output_store", f'must be "local" or s3://BUCKET/PREFIX, not {value!r}')
    name, _, prefix = value[len(SCHEME) :].partition("/")
    if not 3 <= len(name) <= 63 or not all(c.isalnum() or c in ".-" for c in name):
        raise ConfigError("output_store", f"{name!r} is not a bucket name")
    return Bucket(name, prefix.strip("/"))


def make_client(config: CoordinatorConfig) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError(
            "output_store", "object storage needs boto3: pip install 'comfyfleet[s3]'"
        ) from None

    return boto3.client(
        "s3",
        endpoint_url=config.s3_endpoint_url,
        region_name=config.s3_region,
        config=Config(
            signature_version="s3v4",
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    )


def _translated(what: str, exc: Exception) -> CoordinatorError:
    """A boto3 failure as the coordinator's error: a refusal, or a passing fault (503)."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return OutputStoreRefused(f"object storage: no usable credentials to {what} ({exc})")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = str(error.get("Message", "")) or "no message"
        if code in REFUSALS or status in (401, 403):
            return OutputStoreRefused(f"object storage refused to {what}: {code}: {message}")
        return StoreUnavailable(f"object storage failed to {what}: {code}: {message}")
    return StoreUnavailable(f"object storage unreachable to {what}: {type(exc).__name__}")


class ObjectOutputs(OutputFiles):
    """The output files of jobs, kept in a bucket. The chunked upload protocol of OutputFiles
    is refused (agents are told `direct_uploads`); `verify`, `forget` and the rest of the
    coordinator's calls work as for the local store. Blocking methods (`plan`, `complete`,
    `remove_job`, `stored_bytes`) are called from worker threads."""

    def __init__(self, config: CoordinatorConfig, client: Any | None = None) -> None:
        super().__init__(config.outputs_dir, config.max_output_bytes)
        self.bucket = parse_location(config.output_store)
        self.part_size = max(MIN_PART, config.s3_part_size)
        self.url_ttl_s = config.s3_url_ttl_s
        self.s3 = client if client is not None else make_client(config)

    def _call(self, what: str, method: str, **params: Any) -> Any:
        try:
            return getattr(self.s3, method)(Bucket=self.bucket.name, **params)
        except Exception as exc:  # noqa: BLE001 - every boto3 failure is translated
            if isinstance(exc, CoordinatorError):
                raise
            raise _translated(what, exc) from exc

    def job_prefix(self, tenant: str, job_id: str) -> str:
        return "/".join(x for x in (self.bucket.prefix, tenant, job_id) if x) + "/"

    def key(self, tenant: str, job_id: str, attempt: int, name: str) -> str:
        return f"{self.job_prefix(tenant, job_id)}{attempt}/{name}"

    def _presign(self, method: str, **params: Any) -> str:
        return str(
            self.s3.generate_presigned_url(
                method, Params={"Bucket": self.bucket.name, **params}, ExpiresIn=self.url_ttl_s
            )
        )

    def _pending_upload(self, key: str) -> str | None:
        found = self._call("list uploads", "list_multipart_uploads", Prefix=key)
        ids = [u["UploadId"] for u in found.get("Uploads", []) if u.get("Key") == key]
        return ids[0] if ids else None

    def _parts(self, key: str, upload_id: str) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        marker = 0
        while True:
            page = self._call(
                "list parts", "list_parts", Key=key, UploadId=upload_id, PartNumberMarker=marker
            )
            parts.extend(page.get("Parts", []))
            if not page.get("IsTruncated"):
                return parts
            marker = int(page["NextPartNumberMarker"])

    def _size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.s3.head_object(Bucket=self.bucket.name, Key=key)["ContentLength"])
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _translated("look up an output", exc) from exc
        except Exception as exc:  # noqa: BLE001
            raise _translated("look up an output", exc) from exc

    def plan(self, tenant: str, job_id: str, attempt: int, name: str, size: int) -> p.UploadPlan:
        """What the agent still has to PUT of this output, with presigned URLs."""
        if size > self.max_bytes:
            raise InvalidInput("size", f"must be between 0 and {self.max_bytes}", "out_of_range")
        key = self.key(tenant, job_id, attempt, name)
        upload_id = self._pending_upload(key)  # also proves the credentials, before any URL
        if upload_id is None and self._size(key) == size:
            return p.UploadPlan(name=name, complete=True)
        if upload_id is None and size <= self.part_size:
            url = self._presign("put_object", Key=key)
            return p.UploadPlan(
                name=name, parts=[p.UploadPart(number=0, offset=0, size=size, url=url)]
            )
        if upload_id is None:
            upload_id = self._call("start an upload", "create_multipart_upload", Key=key)[
                "UploadId"
            ]
        have = {int(x["PartNumber"]): int(x["Size"]) for x in self._parts(key, upload_id)}
        parts = []
        for number, offset in enumerate(range(0, size, self.part_size), 1):
            length = min(self.part_size, size - offset)
            if have.get(number) != length:
                url = self._presign("upload_part", Key=key, UploadId=upload_id, PartNumber=number)
                parts.append(p.UploadPart(number=number, offset=offset, size=length, url=url))
        return p.UploadPlan(name=name, parts=parts)

    def complete(
        self, tenant: str, job_id: str, attempt: int, name: str, size: int, sha256: str
    ) -> p.UploadState:
        """Finish a multipart upload, then read the object back: size and sha256 must match
        what the agent declared, or the object is deleted and must be uploaded again."""
        key = self.key(tenant, job_id, attempt, name)
        if self.verified.get((job_id, attempt, name)) == (size, sha256):
            return p.UploadState(name=name, received=size, size=size, complete=True)
        upload_id = self._pending_upload(key)
        if upload_id is not None:
            parts = self._parts(key, upload_id)
            if sum(int(x["Size"]) for x in parts) != size:
                raise Conflict(f"parts of {name} are missing; ask for the plan again", "parts")
            self._call(
                "finish an upload",
                "complete_multipart_upload",
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [
                        {"PartNumber": x["PartNumber"], "ETag": x["ETag"]}
                        for x in sorted(parts, key=lambda x: int(x["PartNumber"]))
                    ]
                },
            )
        stored = self._size(key)
        if stored is None:
            raise Conflict(f"output {name} was not uploaded; ask for the plan again", "name")
        if stored != size or self._sha256(key) != sha256:
            self._call("delete a bad output", "delete_object", Key=key)
            raise InvalidInput(
                "sha256", f"size or checksum of {name} does not match; upload it again"
            )
        self.verified[(job_id, attempt, name)] = (size, sha256)
        return p.UploadState(name=name, received=size, size=size, complete=True)

    def _sha256(self, key: str) -> str:
        body = self._call("read an output back", "get_object", Key=key)["Body"]
        digest = hashlib.sha256()
        try:
            while chunk := body.read(READ_BLOCK):
                digest.update(chunk)
        except Exception as exc:  # noqa: BLE001
            raise _translated("read an output back", exc) from exc
        finally:
            body.close()
        return digest.hexdigest()

    def download_url(
        self, tenant: str, job_id: str, attempt: int, name: str, content_type: str, disposition: str
    ) -> str:
        """A presigned GET that serves the object with the coordinator's own headers."""
        return self._presign(
            "get_object",
            Key=self.key(tenant, job_id, attempt, name),
            ResponseContentType=content_type,
            ResponseContentDisposition=disposition,
        )

    # --- the calls the coordinator's core makes of any output store -------------------------

    def verify(self, job_id: str, attempt: int, name: str, size: int, sha256: str) -> bool:
        return self.verified.get((job_id, attempt, name)) == (size, sha256)

    def received(self, job_id: str, attempt: int, name: str) -> int:
        return 0

    def open_chunk(
        self,
        job_id: str,
        attempt: int,
        name: str,
        offset: int,
        size: int,
        sha256: str,
        length: int | None,
    ) -> ChunkSink | ChunkResult:
        raise Conflict(
            "this coordinator keeps outputs in object storage: ask for an upload plan", "name"
        )

    def drop_attempt(self, job_id: str, attempt: int) -> None:
        self.forget(job_id, attempt)  # its objects go with the job (retention)

    def drop_other_attempts(self, job_id: str, keep: int) -> None:
        pass  # as above

    # --- retention (output_store.OutputStore) --------------------------------------------------

    def _keys(self, prefix: str) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Prefix": prefix}
            if token:
                params["ContinuationToken"] = token
            page = self._call("list outputs", "list_objects_v2", **params)
            found.extend((o["Key"], int(o["Size"])) for o in page.get("Contents", []))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return found

    def remove_job(self, job_id: str, tenant: str) -> None:
        prefix = self.job_prefix(tenant, job_id)
        keys = [k for k, _ in self._keys(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self._call("delete outputs", "delete_objects", Delete={"Objects": batch, "Quiet": True})
        found = self._call("list uploads", "list_multipart_uploads", Prefix=prefix)
        for upload in found.get("Uploads", []):
            self._call(
                "abort an upload",
                "abort_multipart_upload",
                Key=upload["Key"],
                UploadId=upload["UploadId"],
            )

    def stored_bytes(self) -> int:
        prefix = f"{self.bucket.prefix}/" if self.bucket.prefix else ""
        return sum(size for _, size in self._keys(prefix))

    def fullness(self) -> float | None:
        return None  # a bucket has no high-water mark
