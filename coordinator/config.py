"""Coordinator configuration: one frozen dataclass, passed in explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from comfyfleet.coordinator.store.dsn import mask_url


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    data_dir: Path
    # The job store: unset for the SQLite file data_dir/coordinator.db, or a postgresql:// URL
    # (`config show` and the logs mask its password).
    store: str | None = field(default=None, metadata={"mask": mask_url})
    host: str = "127.0.0.1"
    port: int = 8188
    # The URL agents and clients reach this coordinator at; followers send agents to the leader's.
    # Default: http(s)://HOST:PORT (this machine's name when HOST is a wildcard address).
    advertise_url: str | None = None
    # Where outputs live; default DATA_DIR/outputs. Several coordinators: one shared directory
    # (NFS, CephFS, ...) that every coordinator mounts at this path.
    outputs_root: Path | None = None
    # Several coordinators on one PostgreSQL store (DESIGN.md §8): the leader's lease lasts
    # leader_lease_s and is renewed every leader_renew_s; followers try to take it every
    # leader_poll_s and the leader reads the orders they leave at least every orders_poll_s.
    leader_lease_s: float = 3.0
    leader_renew_s: float = 1.0
    leader_poll_s: float = 0.5
    orders_poll_s: float = 1.0
    heartbeat_interval_s: float = 5.0
    lost_grace_s: float = 5.0  # an agent silent for 3 intervals + this is lost
    restart_grace_s: float = 30.0  # after a coordinator restart, time for agents to come back
    assign_timeout_s: float = 30.0  # ASSIGNED but not started within this -> requeue
    cancel_grace_s: float = 30.0  # a cancel/timeout the agent never confirms -> forced
    lease_wait_s: float = 25.0
    chunk_size: int = 8 << 20
    max_body_bytes: int = 8 << 20  # job submissions and protocol messages
    max_chunk_bytes: int = 16 << 20
    max_output_bytes: int = 4 << 30
    # an output of at most this many bytes may come inside its finish report instead of being
    # uploaded (local output store only: agents upload to object storage themselves); 0: none
    inline_output_bytes: int = 256 << 10
    default_vram_mb: int = 0  # reservation for a job that declares none
    starvation_s: float = 300.0
    sweep_interval_s: float = 0.5
    # admission control and limits (issue 4): shed load with 429/503 + Retry-After
    max_queued_jobs: int = 100_000  # jobs waiting for a GPU; 0 = unbounded
    retry_after_s: int = 5
    body_read_timeout_s: float = 30.0  # a client slower than this sending its body gets 408
    max_header_bytes: int = 8190  # one header line / field
    max_headers: int = 100
    keepalive_timeout_s: float = 15.0  # idle connections, and headers sent too slowly, close
    # placement: failure blocking per (agent, workflow shape), learned VRAM (issue 8)
    block_after_failures: int = 2  # agent-specific failures of one shape that block the pair
    block_cooldown_s: float = 60.0  # how long a blocked pair stays blocked
    block_window_s: float = 600.0  # failures older than this do not count
    vram_estimate_margin: float = 1.25  # learned peak VRAM x this for jobs declaring none
    max_input_bytes: int = 6 << 20  # input files of one job, decoded
    affinity_bucket_mb: int = 4096  # GPUs this close in VRAM left fit alike: warm cache decides
    log_level: str = "info"
    keys_file: Path | None = None  # hashed API keys and agent tokens; default data_dir/keys.json
    tls_cert: Path | None = None  # serve HTTPS when this and tls_key are set
    tls_key: Path | None = None
    shutdown_grace_s: float = 20.0  # on SIGTERM, requests in flight get this long to finish
    # HOST:PORT of a second listener that speaks ComfyUI's own API (coordinator/comfy/); off
    comfy_listen: str | None = None
    comfy_max_upload_bytes: int = 100 << 20  # /upload/image and /upload/mask bodies
    # results that leave the coordinator (issue 17): webhooks and retention
    webhook_secret: str | None = None  # whsec_...: signs webhooks of tenants without their own
    webhook_allow_private_addresses: bool = False  # let webhooks reach loopback/private hosts
    webhook_retry_first_s: float = 1.0  # the wait after a first failed try (then doubling)
    webhook_retry_cap_s: float = 600.0  # the longest wait between tries
    webhook_retry_for_s: float = 86_400.0  # a message not delivered within this is given up
    webhook_timeout_s: float = 10.0  # one try: connect, send, answer
    webhook_concurrency: int = 32  # tries in flight at once
    retention_s: float = 7 * 86_400.0  # finished jobs and their outputs are deleted after this
    retention_sweep_s: float = 60.0  # how often expired jobs are looked for
    disk_high_water: float = 0.9  # local outputs' filesystem fuller than this: shed oldest
    # where outputs live: "local" (outputs_root, default data_dir/outputs) or "s3://BUCKET/PREFIX"
    # (S3-compatible object storage; credentials and region from the usual AWS environment
    # variables or files)
    output_store: str = "local"
    s3_endpoint_url: str | None = None  # an S3-compatible service other than AWS
    s3_region: str | None = None  # default: AWS_DEFAULT_REGION / the AWS config file
    s3_part_size: int = 16 << 20  # outputs larger than this go up in parts of this size
    s3_url_ttl_s: int = 900  # lifetime of presigned upload and download URLs

    @property
    def inline_output_limit(self) -> int:
        """The largest output accepted inside a finish report (RegisterReply); 0: none."""
        return self.inline_output_bytes if self.output_store == "local" else 0

    @property
    def lost_after_s(self) -> float:
        return 3 * self.heartbeat_interval_s + self.lost_grace_s

    @property
    def db_path(self) -> Path:
        return self.data_dir / "coordinator.db"

    @property
    def keys_path(self) -> Path:
        return self.keys_file or self.data_dir / "keys.json"

    @property
    def outputs_dir(self) -> Path:
        return self.outputs_root or self.data_dir / "outputs"

    @property
    def comfy_dir(self) -> Path:
        """The ComfyUI facade's own files: uploads, history deletions."""
        return self.data_dir / "comfy"

    @property
    def url(self) -> str:
        """This coordinator's URL as others reach it (advertise_url, or made from host:port)."""
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        scheme = "https" if self.tls_cert and self.tls_key else "http"
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            import socket

            host = socket.getfqdn()
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"
