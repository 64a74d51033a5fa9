"""``inference-sidecar labels send FILE.csv``: back-fill labels from a CSV file.

The file has a header row. Columns:

- ``request_id`` (required): the id of the ModelInfer request;
- ``model`` (required): the model that made the prediction;
- ``row`` (optional, default 0): the row within a batched request;
- the label, in exactly one of ``class_name``, ``class_index`` (classifiers)
  or ``value`` (regressors) per line; a file may have several of these columns
  and fill one per line.

Labels go out with SendLabels in batches; every label that is not matched is
reported with its line number and the server's reason. Lines that cannot be
read are reported and not sent. When the server guards label writes, pass a
bearer token file and/or TLS files (``Credentials``; docs/security.md).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc

from sidecar.errors import SidecarError
from sidecar.proto import feedback_pb2 as fb
from sidecar.proto import feedback_pb2_grpc as fb_grpc

VALUE_COLUMNS = ("class_name", "class_index", "value")
OUTCOME_NAMES = {
    fb.MATCHED: "matched",
    fb.UNKNOWN_ID: "unknown_id",
    fb.EXPIRED: "expired",
    fb.DUPLICATE: "duplicate",
    fb.INVALID: "invalid",
}


class LabelFileError(SidecarError):
    """The CSV file cannot be read or has no usable header."""


@dataclass
class SendReport:
    """What happened to a file's labels."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOME_NAMES.values(), 0))
    unreadable: int = 0  # lines not sent

    @property
    def sent(self) -> int:
        """Labels the server answered."""
        return sum(self.counts.values())

    @property
    def all_matched(self) -> bool:
        """True when every line was sent and matched."""
        return self.unreadable == 0 and self.counts["matched"] == self.sent

    def summary(self) -> str:
        """One line: counts by outcome."""
        parts = ", ".join(f"{name} {n}" for name, n in self.counts.items())
        extra = f"; {self.unreadable} unreadable lines not sent" if self.unreadable else ""
        return f"{self.sent} labels sent: {parts}{extra}"


def _parse(record: dict[str, str | None]) -> fb.Label:
    request_id = (record.get("request_id") or "").strip()
    model = (record.get("model") or "").strip()
    if not request_id or not model:
        raise ValueError("request_id and model must not be empty")
    row_text = (record.get("row") or "").strip()
    try:
        row = int(row_text) if row_text else 0
    except ValueError:
        raise ValueError(f"row must be a whole number, got {row_text!r}") from None
    if not 0 <= row < 2**32:
        raise ValueError(f"row must be between 0 and 2**32 - 1, got {row}")
    filled = {c: (record.get(c) or "").strip() for c in VALUE_COLUMNS}
    filled = {c: v for c, v in filled.items() if v}
    if len(filled) != 1:
        raise ValueError(f"fill exactly one of {', '.join(VALUE_COLUMNS)}; got {len(filled)}")
    [(column, text)] = filled.items()
    label = fb.Label(request_id=request_id, model_name=model, row=row)
    if column == "class_name":
        label.class_name = text
    elif column == "class_index":
        try:
            label.class_index = int(text)
        except ValueError:
            raise ValueError(f"class_index must be a whole number, got {text!r}") from None
    else:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"value must be a number, got {text!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"value must be a finite number, got {text!r}")
        label.number = number
    return label


def read_labels(handle: TextIO, name: str) -> Iterator[tuple[int, fb.Label | str]]:
    """(line number, label or the reason the line cannot be sent) for every data line."""
    reader = csv.DictReader(handle)
    header = reader.fieldnames or []
    missing = [c for c in ("request_id", "model") if c not in header]
    if missing or not any(c in header for c in VALUE_COLUMNS):
        raise LabelFileError(
            f"{name}: the header must name request_id, model and one of "
            f"{', '.join(VALUE_COLUMNS)} (row optional); it has: {', '.join(header) or '(none)'}"
        )
    for record in reader:
        line = reader.line_num
        try:
            yield line, _parse(record)
        except ValueError as exc:
            yield line, str(exc)


@dataclass(frozen=True)
class Credentials:
    """How ``send_file`` proves who it is: a bearer token and/or TLS (mutual with a cert)."""

    token: str | None = None
    ca: bytes | None = None  # PEM CA to trust; with it the channel is TLS
    cert: bytes | None = None  # PEM client certificate chain (mutual TLS)
    key: bytes | None = None

    @classmethod
    def from_files(
        cls,
        token_file: Path | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> Credentials:
        """Read the files given; a token file's first non-empty line is the token."""
        if (cert_file is None) != (key_file is None):
            raise SidecarError("--cert-file and --key-file go together (mutual TLS)")
        if cert_file is not None and ca_file is None:
            raise SidecarError("--cert-file needs --ca-file (the CA that signed the server)")

        def read(file: Path | None) -> bytes | None:
            try:
                return None if file is None else file.read_bytes()
            except OSError as exc:
                raise SidecarError(f"{file}: cannot read: {exc.strerror}") from exc

        token = None
        if token_file is not None:
            lines = [t.strip() for t in (read(token_file) or b"").decode().splitlines()]
            token = next((t for t in lines if t), None)
            if token is None:
                raise SidecarError(f"{token_file}: holds no token")
        return cls(token, read(ca_file), read(cert_file), read(key_file))

    def channel(self, address: str) -> grpc.Channel:
        """A channel to ``address``: TLS when a CA is given, plaintext otherwise."""
        if self.ca is None:
            return grpc.insecure_channel(address)
        creds = grpc.ssl_channel_credentials(self.ca, self.key, self.cert)
        return grpc.secure_channel(address, creds)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata carrying the token, if any."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def send_file(
    path: Path,
    address: str,
    batch_size: int = 1000,
    timeout: float = 60.0,
    problems: TextIO | None = None,
    max_problems: int = 20,
    credentials: Credentials | None = None,
) -> SendReport:
    """Send every label of ``path`` to the server at ``address``; report what happened."""
    credentials = credentials or Credentials()
    report = SendReport()
    shown = 0

    def problem(line: int, outcome: str, detail: str) -> None:
        nonlocal shown
        shown += 1
        if problems is not None and shown <= max_problems:
            problems.write(f"{path}:{line}: {outcome}: {detail}\n")

    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise LabelFileError(f"{path}: cannot read: {exc.strerror}") from exc
    with handle, credentials.channel(address) as channel:
        stub = fb_grpc.FeedbackServiceStub(channel)
        batch: list[tuple[int, fb.Label]] = []

        def flush() -> None:
            try:
                reply = stub.SendLabels(
                    fb.SendLabelsRequest(labels=[label for _, label in batch]),
                    timeout=timeout,
                    metadata=credentials.metadata,
                )
            except grpc.RpcError as exc:
                code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
                details = exc.details() if hasattr(exc, "details") else str(exc)
                raise SidecarError(
                    f"sending labels to {address} failed at line {batch[0][0]} ({code}: "
                    f"{details}); before it: {report.summary()}"
                ) from exc
            for (line, _), result in zip(batch, reply.results, strict=True):
                outcome = OUTCOME_NAMES.get(result.outcome, "invalid")
                report.counts[outcome] += 1
                if outcome != "matched":
                    problem(line, outcome, result.detail)
            batch.clear()

        for line, parsed in read_labels(handle, str(path)):
            if isinstance(parsed, str):
                report.unreadable += 1
                problem(line, "not sent", parsed)
                continue
            batch.append((line, parsed))
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    if problems is not None and shown > max_problems:
        problems.write(f"... and {shown - max_problems} more\n")
    return report
