"""How the hook proves itself to the sidecar: a bearer token in each call's metadata, TLS on the channel.

Resolved once at `watch()` (arguments first, then $NOISESCOPE_TOKEN, $NOISESCOPE_TLS_CA, $NOISESCOPE_TLS_CERT,
$NOISESCOPE_TLS_KEY, $NOISESCOPE_TLS_SERVER_NAME), so a wrong path or a half-given pair is a clear error before
training starts. The token is never logged and never shown in a repr.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import grpc

PathOrPem = Union[str, bytes, "os.PathLike[str]"]

MIN_TOKEN_LENGTH = 16  # as the sidecar requires
_TOKEN = re.compile(r"[\x21-\x7e]+")  # it travels in an HTTP/2 header
_SERVER_NAME = re.compile(r"[A-Za-z0-9._:\[\]-]+")  # a DNS name or an IP address


@dataclass(frozen=True)
class Credentials:
    token: str | None = field(default=None, repr=False)
    root_certificates: bytes | None = field(default=None, repr=False)
    certificate_chain: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)
    tls: bool = False
    server_name: str | None = None  # checked against the server certificate instead of the address's host

    def __repr__(self) -> str:
        return f"Credentials(token={'set' if self.token else 'none'}, tls={self.tls})"

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self, address: str, options: Any = None) -> grpc.Channel:
        import grpc

        if not self.tls:
            return grpc.insecure_channel(address, options=options)
        if self.server_name is not None:
            options = [*(options or ()), ("grpc.ssl_target_name_override", self.server_name)]
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )
        return grpc.secure_channel(address, credentials, options=options)


def resolve(
    token: str | None = None,
    tls_ca: PathOrPem | None = None,
    tls_cert: PathOrPem | None = None,
    tls_key: PathOrPem | None = None,
    tls_server_name: str | None = None,
) -> Credentials:
    """watch()'s arguments, else the environment; raises TypeError/ValueError naming the bad one."""
    token = _token(token)
    ca = _pem(tls_ca, "tls_ca", "NOISESCOPE_TLS_CA")
    cert = _pem(tls_cert, "tls_cert", "NOISESCOPE_TLS_CERT")
    key = _pem(tls_key, "tls_key", "NOISESCOPE_TLS_KEY")
    if (cert is None) != (key is None):
        raise ValueError("noisescope.watch: tls_cert and tls_key go together (a client certificate and its key): give both")
    tls = ca is not None or cert is not None
    server_name = _server_name(tls_server_name, tls)
    return Credentials(
        token=token,
        root_certificates=ca,
        certificate_chain=cert,
        private_key=key,
        tls=tls,
        server_name=server_name,
    )


def _or_env(value: Any, name: str, env: str) -> tuple[Any, str]:
    """The argument, else the environment variable (None when neither), and how an error names it."""
    return (value, name) if value is not None else (os.environ.get(env) or None, f"${env}")


def _server_name(name: str | None, tls: bool) -> str | None:
    name, what = _or_env(name, "tls_server_name", "NOISESCOPE_TLS_SERVER_NAME")
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"noisescope.watch: tls_server_name must be a str or None, got {type(name).__name__}")
    if not _SERVER_NAME.fullmatch(name):
        raise ValueError(f"noisescope.watch: {what} {name!r} is not a host name (letters, digits, '.', '-', ':')")
    if not tls:
        raise ValueError(
            f"noisescope.watch: {what} is the name checked against the sidecar's TLS certificate, but TLS is off: "
            "give tls_ca (or $NOISESCOPE_TLS_CA) too"
        )
    return name


def _token(token: str | None) -> str | None:
    token, what = _or_env(token, "token", "NOISESCOPE_TOKEN")
    if token is None:
        return None
    if not isinstance(token, str):
        raise TypeError(f"noisescope.watch: token must be a str or None, got {type(token).__name__}")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"noisescope.watch: {what} needs at least {MIN_TOKEN_LENGTH} characters, got {len(token)}")
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"noisescope.watch: {what} must be printable ASCII without spaces or newlines")
    return token


def _pem(value: PathOrPem | None, name: str, env: str) -> bytes | None:
    """PEM bytes as given, or read from a path (the argument, else the environment variable)."""
    what = name
    if value is None:
        value = os.environ.get(env) or None
        what = f"${env}"
        if value is None:
            return None
    if isinstance(value, bytes):
        pem = value
    elif isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        try:
            with open(path, "rb") as file:
                pem = file.read()
        except OSError as error:
            raise ValueError(f"noisescope.watch: {what} {path}: cannot read it ({error.strerror})") from None
    else:
        raise TypeError(f"noisescope.watch: {name} must be a path or PEM bytes, got {type(value).__name__}")
    if b"-----BEGIN " not in pem:
        raise ValueError(f"noisescope.watch: {what} is not PEM (no '-----BEGIN' line)")
    return pem
