"""TLS contexts: the coordinator's server side, and the verifying client side (agent, CLI)."""

from __future__ import annotations

import ssl
from pathlib import Path

from comfyfleet.shared.settings import ConfigError


def server_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """HTTPS when both a certificate (chain) and its key are given; plain HTTP when neither."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing = "tls_cert" if cert is None else "tls_key"
        raise ConfigError(missing, "tls_cert and tls_key go together: set both or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError("tls_cert", f"cannot read {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            "tls_cert", f"cannot load certificate {cert} / key {key}: {exc}"
        ) from None
    return context


def client_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verifies the server's certificate and host name against `ca_file`, or the system CAs."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except FileNotFoundError:
        raise ConfigError("ca_file", f"CA file {ca_file} does not exist") from None
    except ssl.SSLError as exc:
        raise ConfigError("ca_file", f"CA file {ca_file} is not usable: {exc}") from None
