"""Optional TLS (and mutual TLS) on the metrics port, with certificates rotated on disk."""

from __future__ import annotations

import http.client
import ssl
import tempfile
from pathlib import Path

import pytest

from sidecar.app import AppParts
from sidecar.errors import ConfigError
from sidecar.metrics_listener import ServerMetrics
from tests.certs import Authority, Issued, authority, issue, replace_file
from tests.helpers import running_server, server_config


def write_tls(tmp_path: Path, server: Issued, client_ca: Authority | None = None) -> dict[str, str]:
    files = {"cert_file": tmp_path / "m.crt", "key_file": tmp_path / "m.key"}
    replace_file(files["cert_file"], server.cert)
    replace_file(files["key_file"], server.key)
    if client_ca is not None:
        files["client_ca_file"] = tmp_path / "m-ca.crt"
        replace_file(files["client_ca_file"], client_ca.pem)
    return {k: str(v) for k, v in files.items()}


def scrape(port: int, trust: Authority | None, client: Issued | None = None) -> str:
    """'200 True' (a metrics body came back), or the error that ended the scrape."""
    if trust is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    else:
        context = ssl.create_default_context(cadata=trust.pem.decode())
        if client is not None:
            with tempfile.TemporaryDirectory() as folder:  # ssl loads chains from files only
                (Path(folder) / "c.crt").write_bytes(client.cert)
                (Path(folder) / "c.key").write_bytes(client.key)
                context.load_cert_chain(Path(folder) / "c.crt", Path(folder) / "c.key")
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read().decode()
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    finally:
        conn.close()
    return f"{response.status} {'sidecar_' in body}"


def test_metrics_over_tls_and_mutual_tls_with_rotation(tmp_path: Path) -> None:
    ca, other = authority("metrics CA"), authority("other CA")
    tls = write_tls(tmp_path, issue(ca, "sidecar", server=True), client_ca=ca)
    config = server_config(tmp_path, metrics={"tls": tls})
    metrics = ServerMetrics(config.metrics)
    with running_server(config, AppParts(metrics=metrics)):
        port = metrics.http.port
        assert metrics.http.url.startswith("https://")
        assert scrape(port, ca, issue(ca, "prometheus")) == "200 True"
        assert scrape(port, ca) != "200 True"  # no client certificate
        assert scrape(port, ca, issue(other, "prometheus")) != "200 True"
        assert scrape(port, other, issue(ca, "prometheus")) != "200 True"  # untrusted server
        assert scrape(port, None) != "200 True"  # plain HTTP

        new_ca = authority("rotated metrics CA")
        fresh = issue(new_ca, "sidecar", server=True)
        replace_file(Path(tls["cert_file"]), fresh.cert)  # half a rotation: old pair stays
        assert scrape(port, ca, issue(ca, "prometheus")) == "200 True"
        replace_file(Path(tls["key_file"]), fresh.key)
        replace_file(Path(tls["client_ca_file"]), new_ca.pem)
        assert scrape(port, new_ca, issue(new_ca, "prometheus")) == "200 True"
        assert scrape(port, ca, issue(ca, "prometheus")) != "200 True"
        assert metrics.tls is not None and metrics.tls.reloads == 1


def test_metrics_tls_without_client_ca_serves_any_trusting_client(tmp_path: Path) -> None:
    ca = authority("metrics CA")
    config = server_config(
        tmp_path, metrics={"tls": write_tls(tmp_path, issue(ca, "s", server=True))}
    )
    metrics = ServerMetrics(config.metrics)
    with running_server(config, AppParts(metrics=metrics)):
        assert scrape(metrics.http.port, ca) == "200 True"


def test_unusable_metrics_tls_files_stop_start_up(tmp_path: Path) -> None:
    ca = authority("metrics CA")
    a, b = issue(ca, "a", server=True), issue(ca, "b", server=True)
    config = server_config(tmp_path, metrics={"tls": write_tls(tmp_path, Issued(b.key, a.cert))})
    with pytest.raises(ConfigError, match=r"metrics\.tls: cannot use"):
        ServerMetrics(config.metrics)
