"""The cluster's certificate authority and the certificates it signs, for mutual TLS.

A cluster folder holds ``ca.pem`` + ``ca.key`` (the CA) and one ``NAME.pem`` + ``NAME.key`` pair
per device or coordinator. Every leaf certificate is good for both ends of a connection
(``serverAuth`` and ``clientAuth``): a worker serves with it and also presents it when it sends
activations to the next worker. Keys are ECDSA P-256: small, fast to handshake on a Cortex-A72,
and accepted by gRPC's BoringSSL. Private keys are written with mode 0600 and never overwritten
unless the caller says ``force``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgesplit.config import TlsSpec
from edgesplit.errors import ConfigError

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CA_DAYS = 3650
LEAF_DAYS = 825
"""Leaf lifetime: the longest most TLS clients accept for a server certificate."""
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
"""Always in a leaf's SANs, so the same certificate works on an emulated cluster."""
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_CLOCK_SKEW = dt.timedelta(minutes=5)
"""Certificates start a little in the past so a peer whose clock lags still accepts them."""

Host = x509.DNSName | x509.IPAddress
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class Issued:
    """Files written by :func:`init_ca` or :func:`issue`."""

    cert: Path
    key: Path
    subject: str
    hosts: tuple[str, ...]
    not_after: dt.datetime


def check_name(name: str) -> str:
    """A certificate name is a device name (as in the cluster file) or ``coordinator``."""
    if not _NAME.match(name):
        raise ConfigError(f"certificate name must match [A-Za-z0-9_.-]+ like pi1, got {name!r}")
    if name in (Path(CA_CERT).stem, Path(CA_KEY).stem):
        raise ConfigError(f"certificate name {name!r} would overwrite the CA's files; pick another")
    return name


def parse_host(host: str) -> Host:
    """``192.168.1.11`` or ``::1`` becomes an IP SAN, ``pi1.lan`` a DNS SAN; anything else is
    refused (a typo here only shows up later as a failed handshake)."""
    with contextlib.suppress(ValueError):
        return x509.IPAddress(ipaddress.ip_address(host))
    labels = host.rstrip(".").split(".")
    if host and len(host) <= 253 and all(_DNS_LABEL.match(label) for label in labels):
        return x509.DNSName(host.rstrip(".").lower())
    raise ConfigError(
        f"--host expects a hostname or IP address like pi1.lan or 10.0.0.11, got {host!r}"
    )


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with ``mode`` from the first byte (a key must never be world-readable,
    not even for an instant)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _refuse_overwrite(paths: Iterable[Path], force: bool, what: str) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise ConfigError(
            f"{what} already exists ({', '.join(existing)}); pass --force to replace it"
        )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _folder(directory: Path) -> Path:
    directory = Path(directory).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create certificate folder {directory}: {exc.strerror}") from exc
    return directory


def init_ca(
    directory: Path,
    *,
    force: bool = False,
    common_name: str = "edgesplit cluster CA",
    days: int = CA_DAYS,
) -> Issued:
    """Create the cluster CA in ``directory``: ``ca.pem`` (0644) and ``ca.key`` (0600).

    Refuses to replace an existing CA unless ``force``: every certificate it signed would stop
    working at once."""
    directory = _folder(directory)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    _refuse_overwrite((cert_path, key_path), force, "a CA")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = _now() - _CLOCK_SKEW
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key), 0o600)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return Issued(cert_path, key_path, common_name, (), cert.not_valid_after_utc)


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key from ``directory``; a clear error if either is missing or they
    do not belong together."""
    directory = Path(directory).expanduser()
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.exists() or not key_path.exists():
        raise ConfigError(
            f"no CA in {directory} (expected {CA_CERT} and {CA_KEY}); "
            f"create one with: edgesplit certs init {directory}"
        )
    cert = load_cert(cert_path)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key_path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path}: expected an EC private key, got {type(key).__name__}")
    if not _same_public_key(key, cert):
        raise ConfigError(f"{key_path} does not belong to {cert_path}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ConfigError(f"{cert_path} is not a CA certificate (BasicConstraints CA is false)")
    return cert, key


def _same_public_key(key: object, cert: x509.Certificate) -> bool:
    public = getattr(key, "public_key", None)
    if public is None:
        return False
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(public().public_bytes(*der) == cert.public_key().public_bytes(*der))


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).expanduser().read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read certificate {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM certificate: {exc}") from None


def leaf_hosts(name: str, hosts: Sequence[str] = ()) -> list[Host]:
    """The SANs of a leaf: its name, the given hosts, then localhost and 127.0.0.1 (no repeats)."""
    sans: list[Host] = []
    for host in (name, *hosts, *DEFAULT_HOSTS):
        san = parse_host(host)
        if san not in sans:
            sans.append(san)
    return sans


def issue(
    directory: Path,
    name: str,
    hosts: Sequence[str] = (),
    *,
    force: bool = False,
    days: int = LEAF_DAYS,
) -> Issued:
    """Sign ``NAME.pem`` + ``NAME.key`` (0600) with the CA in ``directory``.

    The SANs hold ``name``, every host/IP in ``hosts`` and localhost/127.0.0.1: a peer checks
    the address it dialled (the ``address`` in the cluster file) against them."""
    check_name(name)
    sans = leaf_hosts(name, hosts)
    ca_cert, ca_key = load_ca(directory)
    directory = Path(directory).expanduser()
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    _refuse_overwrite((cert_path, key_path), force, f"a certificate for {name}")
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now() - _CLOCK_SKEW
    not_after = min(start + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:  # a CA made elsewhere (e.g. by openssl without extensions)
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key), 0o600)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return Issued(cert_path, key_path, name, tuple(_san_text(s) for s in sans), not_after)


def _san_text(san: Host) -> str:
    return str(san.value)


def tls_spec(directory: Path, name: str) -> TlsSpec:
    """The :class:`TlsSpec` for ``name``'s files in ``directory`` (as a cluster file holds it)."""
    directory = Path(directory).expanduser()
    return TlsSpec(
        ca=directory / CA_CERT, cert=directory / f"{name}.pem", key=directory / f"{name}.key"
    )


def verify(tls: TlsSpec, at: dt.datetime | None = None) -> str:
    """Check that ``tls.cert`` is signed by ``tls.ca``, is valid now and matches ``tls.key``.

    Returns a one-line description (subject, SANs, expiry); raises ConfigError saying what is
    wrong. Runs before any connection, so a bad file is named instead of a failed handshake."""
    at = at or _now()
    ca, cert = load_cert(tls.ca), load_cert(tls.cert)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(f"{tls.cert} is not signed by the CA {tls.ca}") from None
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise ConfigError(
            f"{tls.cert} is valid from {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}, not now ({at:%Y-%m-%d})"
        )
    try:
        key = serialization.load_pem_private_key(Path(tls.key).expanduser().read_bytes(), None)
    except OSError as exc:
        raise ConfigError(f"cannot read key {tls.key}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{tls.key} is not an unencrypted PEM private key: {exc}") from None
    if not _same_public_key(key, cert):
        raise ConfigError(f"{tls.key} does not belong to {tls.cert}")
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = ", ".join(str(s.value) for s in sans)
    except x509.ExtensionNotFound:
        hosts = "no SANs"
    subject = cert.subject.rfc4514_string()
    return f"{subject} ({hosts}), valid until {cert.not_valid_after_utc:%Y-%m-%d}"
