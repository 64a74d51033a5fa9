"""Authorisation: label writes (and optionally inference) need a token or an mTLS identity.

A dummy FeedbackService stands in for the real one: the guard works on
service names, whatever implements them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.app import AppParts
from sidecar.cli import main
from sidecar.config import load_server_config
from sidecar.errors import ConfigError
from sidecar.proto import feedback_pb2 as fb
from sidecar.proto import feedback_pb2_grpc as fb_grpc
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc
from sidecar.runtimes.fakes import SumRuntime
from sidecar.security import Authorizer
from tests.certs import Authority, authority, issue, replace_file
from tests.helpers import ServerThread, running_server, server_config

TOKEN = "s3cret-token-for-label-writers"
#: The dummy FeedbackService below stands in for the real one (registered by the label store).
NO_LABEL_STORE = {"enabled": False}
OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


class DummyFeedback(fb_grpc.FeedbackServiceServicer):
    """Accepts every label; counts what arrived."""

    def __init__(self) -> None:
        self.received = 0

    async def SendLabels(
        self, request: fb.SendLabelsRequest, context: grpc.aio.ServicerContext
    ) -> fb.SendLabelsResponse:
        self.received += len(request.labels)
        return fb.SendLabelsResponse(
            results=[fb.LabelResult(outcome=fb.MATCHED) for _ in request.labels]
        )

    async def StreamLabels(
        self,
        request_iterator: AsyncIterator[fb.SendLabelsRequest],
        context: grpc.aio.ServicerContext,
    ) -> fb.StreamLabelsResponse:
        total = 0
        async for batch in request_iterator:
            total += len(batch.labels)
        self.received += total
        return fb.StreamLabelsResponse(received=total, matched=total)


class FeedbackRegistrar:
    def __init__(self) -> None:
        self.servicer = DummyFeedback()

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        fb_grpc.add_FeedbackServiceServicer_to_server(self.servicer, server)
        return [fb.DESCRIPTOR.services_by_name["FeedbackService"].full_name]


def labels(n: int = 2) -> fb.SendLabelsRequest:
    return fb.SendLabelsRequest(
        labels=[fb.Label(request_id=f"r{i}", model_name="sum", class_index=1) for i in range(n)]
    )


def infer_request() -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="sum")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return req


def code_of(call: object, *args: object, **kwargs: object) -> grpc.StatusCode:
    try:
        call(*args, timeout=10, **kwargs)  # type: ignore[operator]
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            assert TOKEN not in exc.details() and "wrong" not in exc.details()
        return exc.code()
    return grpc.StatusCode.OK


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "writer-token"
    replace_file(path, f"{TOKEN}\n".encode())
    return path


@pytest.fixture
def token_server(tmp_path: Path, token_file: Path) -> Iterator[tuple[ServerThread, DummyFeedback]]:
    registrar = FeedbackRegistrar()
    config = server_config(
        tmp_path, auth={"writes": {"token_file": str(token_file)}}, labels=NO_LABEL_STORE
    )
    parts = AppParts(registrars=[registrar])
    with running_server(config, parts, fakes=[("sum", SumRuntime(), None)]) as server:
        yield server, registrar.servicer


def test_label_writes_need_the_token(
    token_server: tuple[ServerThread, DummyFeedback], token_file: Path
) -> None:
    server, feedback = token_server
    unauth = grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(server.address) as channel:
        stub = fb_grpc.FeedbackServiceStub(channel)
        assert code_of(stub.SendLabels, labels()) == unauth
        assert code_of(stub.SendLabels, labels(), metadata=bearer("wrong")) == unauth
        assert code_of(stub.SendLabels, labels(), metadata=(("authorization", TOKEN),)) == unauth
        assert code_of(stub.StreamLabels, iter([labels()])) == unauth
        # Garbage from an unauthenticated caller is refused before it is even parsed.
        garbage = channel.unary_unary("/sidecar.v1.FeedbackService/SendLabels")
        assert code_of(garbage, b"\xff\xff") == unauth
        assert feedback.received == 0

        assert code_of(stub.SendLabels, labels(3), metadata=bearer(TOKEN)) == grpc.StatusCode.OK
        assert code_of(stub.StreamLabels, iter([labels(), labels()]), metadata=bearer(TOKEN)) == (
            grpc.StatusCode.OK
        )
        assert feedback.received == 7

        # Inference and health stay open.
        infer = pb_grpc.GRPCInferenceServiceStub(channel)
        assert infer.ModelInfer(infer_request(), timeout=10).model_name == "sum"
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1

    assert server.server.auth.counts == {("writes", "unauthenticated"): 5, ("writes", "allowed"): 2}


def test_token_file_is_reread_when_it_changes(
    token_server: tuple[ServerThread, DummyFeedback], token_file: Path
) -> None:
    server, _ = token_server
    with grpc.insecure_channel(server.address) as channel:
        stub = fb_grpc.FeedbackServiceStub(channel)
        assert code_of(stub.SendLabels, labels(), metadata=bearer(TOKEN)) == grpc.StatusCode.OK
        # Rotation with overlap: both tokens valid, then only the new one.
        replace_file(token_file, f"{TOKEN}\nnext-token\n".encode())
        assert code_of(stub.SendLabels, labels(), metadata=bearer("next-token")) == (
            grpc.StatusCode.OK
        )
        assert code_of(stub.SendLabels, labels(), metadata=bearer(TOKEN)) == grpc.StatusCode.OK
        replace_file(token_file, b"next-token\n")
        assert code_of(stub.SendLabels, labels(), metadata=bearer(TOKEN)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        # A missing file (mid-rotation) keeps the last tokens rather than locking everyone out.
        token_file.unlink()
        assert code_of(stub.SendLabels, labels(), metadata=bearer("next-token")) == (
            grpc.StatusCode.OK
        )


def test_inference_can_be_protected_separately(tmp_path: Path, token_file: Path) -> None:
    config = server_config(
        tmp_path, auth={"inference": {"token_file": str(token_file)}}, labels=NO_LABEL_STORE
    )
    registrar = FeedbackRegistrar()
    parts = AppParts(registrars=[registrar])
    with (
        running_server(config, parts, fakes=[("sum", SumRuntime(), None)]) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        infer = pb_grpc.GRPCInferenceServiceStub(channel)
        assert code_of(infer.ModelInfer, infer_request()) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(infer.ServerLive, pb.ServerLiveRequest()) == grpc.StatusCode.UNAUTHENTICATED
        stream = infer.ModelStreamInfer(iter([infer_request()]), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            list(stream)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(infer.ModelInfer, infer_request(), metadata=bearer(TOKEN)) == (
            grpc.StatusCode.OK
        )
        # Label writes are open here (no writes policy), health always.
        assert code_of(fb_grpc.FeedbackServiceStub(channel).SendLabels, labels()) == (
            grpc.StatusCode.OK
        )
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1


@pytest.fixture(scope="module")
def ca() -> Authority:
    return authority("identity test CA")


def test_mtls_identity_allows_or_denies_label_writes(tmp_path: Path, ca: Authority) -> None:
    files = {"cert_file": tmp_path / "tls.crt", "key_file": tmp_path / "tls.key"}
    server_cert = issue(ca, "sidecar", server=True)
    replace_file(files["cert_file"], server_cert.cert)
    replace_file(files["key_file"], server_cert.key)
    replace_file(tmp_path / "ca.crt", ca.pem)
    tls = {**{k: str(v) for k, v in files.items()}, "client_ca_file": str(tmp_path / "ca.crt")}
    config = server_config(
        tmp_path,
        grpc={"tls": tls},
        auth={"writes": {"allowed_identities": ["label-writer", "spiffe.example/labeler"]}},
        labels=NO_LABEL_STORE,
    )
    registrar = FeedbackRegistrar()
    with running_server(config, AppParts(registrars=[registrar])) as server:

        def send(client_cn: str, dns: tuple[str, ...] = ()) -> grpc.StatusCode:
            client = issue(ca, client_cn, dns)
            creds = grpc.ssl_channel_credentials(ca.pem, client.key, client.cert)
            with grpc.secure_channel(server.address, creds, options=OPTIONS) as channel:
                return code_of(fb_grpc.FeedbackServiceStub(channel).SendLabels, labels())

        assert send("label-writer") == grpc.StatusCode.OK  # subject CN
        assert send("pod-7", dns=("spiffe.example/labeler",)) == grpc.StatusCode.OK  # a SAN
        assert send("intruder") == grpc.StatusCode.PERMISSION_DENIED
        assert registrar.servicer.received == 4
        counts = server.server.auth.counts
        assert counts == {("writes", "allowed"): 2, ("writes", "permission_denied"): 1}


def test_auth_configuration_errors(tmp_path: Path) -> None:
    yaml = tmp_path / "sidecar.yaml"
    yaml.write_text("auth:\n  writes:\n    allowed_identities: [labeler]\n")
    with pytest.raises(ConfigError, match="needs mutual TLS"):
        load_server_config(yaml, env={})
    missing = server_config(tmp_path, auth={"writes": {"token_file": str(tmp_path / "none")}})
    with pytest.raises(ConfigError, match="cannot read the token file"):
        Authorizer(missing.auth)
    (tmp_path / "empty").write_text("\n  \n")
    empty = server_config(tmp_path, auth={"writes": {"token_file": str(tmp_path / "empty")}})
    with pytest.raises(ConfigError, match="holds no token"):
        Authorizer(empty.auth)


def test_the_real_feedback_service_is_guarded(tmp_path: Path, token_file: Path) -> None:
    config = server_config(tmp_path, auth={"writes": {"token_file": str(token_file)}})
    with (
        running_server(config, fakes=[("sum", SumRuntime(), None)]) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = fb_grpc.FeedbackServiceStub(channel)
        assert code_of(stub.SendLabels, labels()) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(stub.StreamLabels, iter([labels()])) == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.SendLabels(labels(), metadata=bearer(TOKEN), timeout=10)
        assert len(reply.results) == 2  # it reached the label store (which judged the labels)
    assert server.server.auth.counts == {
        ("writes", "unauthenticated"): 2,
        ("writes", "allowed"): 1,
    }


def test_labels_send_cli_with_a_token_and_mutual_tls(
    tmp_path: Path, token_file: Path, ca: Authority, capsys: pytest.CaptureFixture[str]
) -> None:
    server_cert, client = issue(ca, "sidecar", server=True), issue(ca, "cli")
    files = {
        "tls.crt": server_cert.cert,
        "tls.key": server_cert.key,
        "ca.crt": ca.pem,
        "cli.crt": client.cert,
        "cli.key": client.key,
    }
    for name, data in files.items():
        replace_file(tmp_path / name, data)
    tls = {
        "cert_file": str(tmp_path / "tls.crt"),
        "key_file": str(tmp_path / "tls.key"),
        "client_ca_file": str(tmp_path / "ca.crt"),
    }
    config = server_config(
        tmp_path, grpc={"tls": tls}, auth={"writes": {"token_file": str(token_file)}}
    )
    csv = tmp_path / "labels.csv"
    csv.write_text("request_id,model,class_index\nnobody,sum,1\n")
    with running_server(config, fakes=[("sum", SumRuntime(), None)]) as server:
        base = ["labels", "send", str(csv), "--address", server.address, "--timeout", "10"]
        mtls = ["--ca-file", str(tmp_path / "ca.crt"), "--cert-file", str(tmp_path / "cli.crt")]
        mtls += ["--key-file", str(tmp_path / "cli.key")]
        assert main([*base, *mtls]) == 2  # TLS but no token: refused
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        assert main([*base, *mtls, "--token-file", str(token_file)]) == 1  # sent; not matched
        assert "1 labels sent" in capsys.readouterr().out
        assert main([*base, "--cert-file", str(tmp_path / "cli.crt")]) == 2
        assert "go together" in capsys.readouterr().err
