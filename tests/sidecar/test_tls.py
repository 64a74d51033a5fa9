"""TLS and mutual TLS on the gRPC port, with certificates rotated on disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.config import ServerConfig
from sidecar.errors import ConfigError
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc
from sidecar.runtimes.fakes import SumRuntime
from sidecar.security import ReloadingCertificates
from tests.certs import Authority, Issued, authority, issue, replace_file
from tests.helpers import ServerThread, running_server, server_config

OPTIONS = [("grpc.use_local_subchannel_pool", 1)]  # no connection shared between channels
SERVING = health_pb2.HealthCheckResponse.SERVING


def tls_config(tmp_path: Path, server: Issued, client_ca: Authority | None = None) -> ServerConfig:
    files = {"cert_file": tmp_path / "tls.crt", "key_file": tmp_path / "tls.key"}
    replace_file(files["cert_file"], server.cert)
    replace_file(files["key_file"], server.key)
    if client_ca is not None:
        files["client_ca_file"] = tmp_path / "ca.crt"
        replace_file(files["client_ca_file"], client_ca.pem)
    return server_config(tmp_path, grpc={"tls": {k: str(v) for k, v in files.items()}})


def live(address: str, trust: Authority | None, client: Issued | None = None) -> grpc.StatusCode:
    """The status of ServerLive over a fresh channel (OK, or why it failed)."""
    if trust is None:
        channel = grpc.insecure_channel(address, options=OPTIONS)
    else:
        creds = grpc.ssl_channel_credentials(
            trust.pem, client.key if client else None, client.cert if client else None
        )
        channel = grpc.secure_channel(address, creds, options=OPTIONS)
    with channel:
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def ca() -> Authority:
    return authority("sidecar test CA")


@pytest.fixture(scope="module")
def other_ca() -> Authority:
    return authority("someone else's CA")


@pytest.fixture
def tls_server(tmp_path: Path, ca: Authority) -> Iterator[ServerThread]:
    config = tls_config(tmp_path, issue(ca, "sidecar", server=True))
    with running_server(config, fakes=[("sum", SumRuntime(), None)]) as server:
        yield server


def test_tls_serves_clients_that_trust_its_ca(
    tls_server: ServerThread, ca: Authority, other_ca: Authority
) -> None:
    assert live(tls_server.address, ca) == grpc.StatusCode.OK
    assert live(tls_server.address, other_ca) == grpc.StatusCode.UNAVAILABLE
    assert live(tls_server.address, None) == grpc.StatusCode.UNAVAILABLE  # plaintext client
    assert tls_server.server.tls is not None and not tls_server.server.tls.mutual


def test_mutual_tls_refuses_clients_without_a_valid_certificate(
    tmp_path: Path, ca: Authority, other_ca: Authority
) -> None:
    config = tls_config(tmp_path, issue(ca, "sidecar", server=True), client_ca=ca)
    with running_server(config) as server:
        address = server.address
        assert live(address, ca, issue(ca, "app")) == grpc.StatusCode.OK
        assert live(address, ca) == grpc.StatusCode.UNAVAILABLE  # no client certificate
        assert live(address, ca, issue(other_ca, "app")) == grpc.StatusCode.UNAVAILABLE
        assert live(address, None) == grpc.StatusCode.UNAVAILABLE


def test_rotated_files_are_used_for_new_connections(tmp_path: Path, ca: Authority) -> None:
    config = tls_config(tmp_path, issue(ca, "sidecar", server=True), client_ca=ca)
    new_ca = authority("rotated CA")
    with running_server(config) as server:
        address = server.address
        assert live(address, ca, issue(ca, "app")) == grpc.StatusCode.OK

        # Half a rotation (a new certificate, the old key) is not taken: the old pair stays.
        fresh = issue(new_ca, "sidecar", server=True)
        replace_file(tmp_path / "tls.crt", fresh.cert)
        assert live(address, ca, issue(ca, "app")) == grpc.StatusCode.OK
        assert live(address, new_ca, issue(new_ca, "app")) == grpc.StatusCode.UNAVAILABLE

        replace_file(tmp_path / "tls.key", fresh.key)
        replace_file(tmp_path / "ca.crt", new_ca.pem)
        assert live(address, new_ca, issue(new_ca, "app")) == grpc.StatusCode.OK
        assert live(address, ca, issue(ca, "app")) == grpc.StatusCode.UNAVAILABLE
        assert server.server.tls is not None and server.server.tls.reloads == 1


def test_unusable_tls_files_stop_start_up(tmp_path: Path, ca: Authority) -> None:
    server, other = issue(ca, "sidecar", server=True), issue(ca, "other", server=True)
    config = tls_config(tmp_path, Issued(other.key, server.cert))  # key of another cert
    with pytest.raises(ConfigError, match=r"grpc\.tls: cannot use"):
        ReloadingCertificates(config.grpc.tls)
    missing = server_config(tmp_path, grpc={"tls": {"cert_file": "/nonexistent", "key_file": "/x"}})
    with pytest.raises(ConfigError, match=r"grpc\.tls"):
        ReloadingCertificates(missing.grpc.tls)


def test_plaintext_health_port_beside_a_tls_grpc_port(tmp_path: Path, ca: Authority) -> None:
    # Kubelet's native gRPC probes cannot speak TLS: grpc.health_port serves health only.
    config = tls_config(tmp_path, issue(ca, "sidecar", server=True), client_ca=ca)
    config = config.model_copy(update={"grpc": config.grpc.model_copy(update={"health_port": 0})})
    with running_server(config, fakes=[("sum", SumRuntime(), None)]) as server:
        address = f"127.0.0.1:{server.server.health_port}"
        with grpc.insecure_channel(address, options=OPTIONS) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "sum"):
                check = health_pb2.HealthCheckRequest(service=service)
                assert health.Check(check, timeout=5).status == SERVING
            inference = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                inference.ServerLive(pb.ServerLiveRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # health only
        assert live(server.address, None) == grpc.StatusCode.UNAVAILABLE  # main port: TLS
