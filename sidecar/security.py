"""TLS credentials that follow their files, and who may call what.

``ReloadingCertificates`` feeds ``grpc.dynamic_ssl_server_credentials`` (and
``ReloadingSSLContext`` the metrics port's HTTPS): gRPC
asks it before each TLS handshake, it compares the files' stat stamps and
re-reads them only when they changed (cert-manager or a Kubernetes secret
rotating them). A half-written pair (a key that does not match its
certificate) is not taken; the previous pair stays until the files agree.
``reloads`` counts rotations taken, ``reload_failures`` changed files that
could not be used (once per state of the files, not per connection); the
metrics exporter reads both.

``Authorizer`` decides per call: a service guarded by a policy needs either a
bearer token listed in the policy's token file (re-read when it changes) or
an mTLS client certificate whose subject CN or a SAN is allowed. Outcomes are
counted per policy in ``counts`` (a fixed, small key set) for the metrics
exporter; refusals tell the client nothing about why beyond the status code.
"""

from __future__ import annotations

import hmac
import logging
import os
import ssl
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc

from sidecar.config import AuthConfig, AuthPolicy, TlsConfig
from sidecar.errors import ConfigError

log = logging.getLogger(__name__)

#: The KServe v2 inference service, guarded by ``auth.inference``.
INFERENCE_SERVICE = "inference.GRPCInferenceService"

Stamp = tuple[tuple[int, int, int], ...]


#: The stamp of files that could not be stat'ed (one missing mid-rotation).
MISSING: Stamp = ()


def _stamp(paths: Sequence[Path]) -> Stamp:
    stats = [os.stat(p) for p in paths]
    return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in stats)


class _Reloads(Protocol):
    reload_failures: int


def _failed_once(owner: _Reloads, stamp: Stamp, last: Stamp | None, exc: Exception) -> Stamp:
    """Count and log a failed reload once per state of the files, not once per connection."""
    if stamp != last:
        owner.reload_failures += 1
        log.warning("TLS files changed but cannot be used (kept the old ones): %s", exc)
    return stamp


class ReloadingCertificates:
    """The server's certificate, key and client CA, re-read when the files change."""

    def __init__(self, tls: TlsConfig) -> None:
        if tls.cert_file is None or tls.key_file is None:
            raise ConfigError("grpc.tls: cert_file and key_file are needed for TLS")
        self._cert = tls.cert_file
        self._key = tls.key_file
        self._ca = tls.client_ca_file
        self._paths = [p for p in (self._cert, self._key, self._ca) if p is not None]
        self._lock = threading.Lock()
        try:
            self._stamp = _stamp(self._paths)
            self._current = self._load()
        except (OSError, ValueError, ssl.SSLError) as exc:
            files = ", ".join(map(str, self._paths))
            raise ConfigError(f"grpc.tls: cannot use {files}: {exc}") from exc
        self.reloads = 0  # successful reloads after start-up
        self.reload_failures = 0  # changed files that could not be used (once per change)
        self._failed: Stamp | None = None  # the stamp of the files that last failed

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate signed by the client CA."""
        return self._ca is not None

    def _load(self) -> grpc.ServerCertificateConfiguration:
        # The standard library checks that the key belongs to the certificate.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self._cert, self._key)
        cert, key = self._cert.read_bytes(), self._key.read_bytes()
        ca = self._ca.read_bytes() if self._ca is not None else None
        if ca is not None:
            ssl.create_default_context(cadata=ca.decode("ascii"))
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that consult ``fetch`` before each handshake."""
        return grpc.dynamic_ssl_server_credentials(
            self._current, self.fetch, require_client_authentication=self.mutual
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the files changed and agree, else None (keep the current)."""
        try:
            with self._lock:
                try:
                    stamp = _stamp(self._paths)
                except OSError as exc:  # a file missing mid-rotation
                    self._failed = _failed_once(self, MISSING, self._failed, exc)
                    return None
                if stamp == self._stamp:
                    return None
                try:
                    config = self._load()
                except (OSError, ValueError, UnicodeDecodeError, ssl.SSLError) as exc:
                    self._failed = _failed_once(self, stamp, self._failed, exc)
                    return None
                if _stamp(self._paths) != stamp:  # changed while being read: next handshake
                    return None
                self._stamp = stamp
                self._current = config
                self.reloads += 1
                self._failed = None
            log.info("TLS certificate files reloaded")
            return config
        except Exception:  # called from gRPC's handshake path: never let it fail
            log.exception("TLS certificate reload failed; keeping the previous certificates")
            return None


class ReloadingSSLContext:
    """An ``ssl.SSLContext`` for an HTTPS listener, rebuilt when its files change.

    Called once per connection (see ``exporters.http``); a rebuilt context is
    taken only when the key matches the certificate, else the previous one stays.
    """

    def __init__(self, tls: TlsConfig, what: str = "metrics.tls") -> None:
        if tls.cert_file is None or tls.key_file is None:
            raise ConfigError(f"{what}: cert_file and key_file are needed for TLS")
        self._cert, self._key, self._ca = tls.cert_file, tls.key_file, tls.client_ca_file
        self._paths = [p for p in (self._cert, self._key, self._ca) if p is not None]
        self._lock = threading.Lock()
        try:
            self._stamp = _stamp(self._paths)
            self._context = self._build()
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(map(str, self._paths))
            raise ConfigError(f"{what}: cannot use {files}: {exc}") from exc
        self.reloads = 0  # successful reloads after start-up
        self.reload_failures = 0  # changed files that could not be used (once per change)
        self._failed: Stamp | None = None

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._cert, self._key)
        if self._ca is not None:
            context.load_verify_locations(cafile=self._ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def __call__(self) -> ssl.SSLContext:
        """The context to use for a new connection."""
        with self._lock:
            stamp: Stamp = MISSING
            try:
                stamp = _stamp(self._paths)
                if stamp != self._stamp:
                    context = self._build()
                    if _stamp(self._paths) == stamp:
                        self._context, self._stamp = context, stamp
                        self.reloads += 1
                        self._failed = None
                        log.info("metrics TLS certificate files reloaded")
            except (OSError, ssl.SSLError) as exc:
                self._failed = _failed_once(self, stamp, self._failed, exc)
            return self._context


class TokenFile:
    """Bearer tokens, one per line, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        try:
            self._stamp = _stamp([path])
            self._tokens = self._read()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the token file: {exc.strerror}") from exc
        if not self._tokens:
            raise ConfigError(f"{path}: the token file holds no token")

    def _read(self) -> tuple[bytes, ...]:
        lines = self._path.read_bytes().splitlines()
        return tuple(t for t in (line.strip() for line in lines) if t)

    def tokens(self) -> tuple[bytes, ...]:
        """The accepted tokens now (the file is stat'ed; read again only if it changed)."""
        try:
            stamp = _stamp([self._path])
        except OSError:
            return self._tokens  # mid-rotation: keep what we had
        if stamp != self._stamp:
            with self._lock:
                try:
                    tokens = self._read()
                except OSError as exc:
                    log.warning("token file %s unreadable, kept old tokens: %s", self._path, exc)
                    return self._tokens
                if not tokens:
                    log.warning("token file %s is now empty: every token is refused", self._path)
                self._tokens, self._stamp = tokens, stamp
        return self._tokens

    def accepts(self, presented: bytes) -> bool:
        """Constant-time comparison against every accepted token."""
        found = False
        for token in self.tokens():
            found |= hmac.compare_digest(token, presented)
        return found


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one authorisation check: ``code`` is None when allowed."""

    code: grpc.StatusCode | None
    message: str = ""


ALLOWED = Decision(None)
UNAUTHENTICATED = Decision(
    grpc.StatusCode.UNAUTHENTICATED,
    "this call needs credentials: a bearer token or an allowed client certificate",
)
DENIED = Decision(grpc.StatusCode.PERMISSION_DENIED, "permission denied")
#: Every outcome ``Authorizer.counts`` knows (a fixed set: metric label values).
OUTCOMES = ("allowed", "unauthenticated", "permission_denied")


class _Policy:
    def __init__(self, name: str, policy: AuthPolicy) -> None:
        self.name = name
        self.tokens = TokenFile(policy.token_file) if policy.token_file is not None else None
        self.identities = frozenset(i.encode() for i in policy.allowed_identities)


class Authorizer:
    """Applies the configured policies to calls; counts outcomes per policy."""

    def __init__(self, config: AuthConfig) -> None:
        self._by_service: dict[str, _Policy] = {}
        for name, services in (
            ("writes", config.write_services),
            ("inference", (INFERENCE_SERVICE,)),
        ):
            policy: AuthPolicy = getattr(config, name)
            if policy.required:
                built = _Policy(name, policy)
                for service in services:
                    self._by_service[service] = built
        self._counts: Counter[tuple[str, str]] = Counter()
        self._policies = tuple(sorted({p.name for p in self._by_service.values()}))

    def guards(self, service: str) -> bool:
        """True when calls to ``service`` must authenticate."""
        return service in self._by_service

    @property
    def policies(self) -> tuple[str, ...]:
        """Names of the policies that guard some service (``writes``, ``inference``)."""
        return self._policies

    @property
    def counts(self) -> Mapping[tuple[str, str], int]:
        """(policy, outcome) → calls; outcome is allowed, unauthenticated or permission_denied."""
        return dict(self._counts)

    def check(
        self,
        service: str,
        metadata: Sequence[tuple[str, str | bytes]] | None,
        auth_context: Mapping[str, Sequence[bytes]],
    ) -> Decision:
        """Whether a call to ``service`` with this metadata and TLS peer may proceed."""
        policy = self._by_service.get(service)
        if policy is None:
            return ALLOWED
        decision = self._decide(policy, metadata or (), auth_context)
        outcome = "allowed" if decision.code is None else decision.code.name.lower()
        self._counts[(policy.name, outcome)] += 1
        return decision

    @staticmethod
    def _decide(
        policy: _Policy,
        metadata: Sequence[tuple[str, str | bytes]],
        auth_context: Mapping[str, Sequence[bytes]],
    ) -> Decision:
        if policy.tokens is not None:
            for key, value in metadata:
                if key != "authorization":
                    continue
                raw = value.encode() if isinstance(value, str) else value
                scheme, _, token = raw.partition(b" ")
                if scheme.lower() == b"bearer" and policy.tokens.accepts(token.strip()):
                    return ALLOWED
        names = [*auth_context.get("x509_common_name", ())]
        names += auth_context.get("x509_subject_alternative_name", ())
        if names and policy.identities.intersection(names):
            return ALLOWED
        return DENIED if names and policy.identities else UNAUTHENTICATED
