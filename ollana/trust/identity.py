"""This node's identity: a key pair and a self-signed certificate whose hash is its device ID.

The device ID is SHA-256 over the certificate's DER, written in base32 (52 characters) and shown in
dash-separated groups of 7. Only the holder of the key can present the certificate, so allowing
an ID pins exactly one key: there is no CA and no name to trust.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ollana.errors import ConfigError
from ollana.files import open_lock, private_dir, write_atomic

log = structlog.get_logger(__name__)

KEY_FILE: Final = "device.key"
CERT_FILE: Final = "device.crt"
LOCK_FILE: Final = "device.lock"
ID_LEN: Final = 52  # base32 of 32 bytes, unpadded
GROUP_LEN: Final = 7
MIN_PREFIX: Final = 7
_ALPHABET: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
# Validity is not what anything relies on (peers pin the certificate's hash), so the window is wide:
# a peer whose clock is wrong (no RTC, before NTP) must still accept the certificate.
_NOT_BEFORE: Final = datetime(1970, 1, 2, tzinfo=UTC)
_NOT_AFTER: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_RESET_HINT: Final = (
    "run `ollana device reset-identity --yes` to make a new identity "
    "(every device paired with this one must then allow it again)"
)


class IdentityError(ConfigError):
    """The identity files are missing, unreadable, corrupt or do not belong together."""


class InvalidDeviceId(ConfigError):
    """Text that is not a device ID (or not a usable prefix of one)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """A loaded identity. The private key stays on disk (ssl loads it by path) and out of reprs."""

    device_id: str
    cert_pem: str = field(repr=False)
    cert_der: bytes = field(repr=False)
    cert_path: Path
    key_path: Path

    @property
    def grouped(self) -> str:
        return grouped(self.device_id)

    @property
    def short(self) -> str:
        return short(self.device_id)


# --- device IDs ------------------------------------------------------------------------------


def device_id_of(cert_der: bytes) -> str:
    return id_from_bytes(hashlib.sha256(cert_der).digest())


def device_id_of_pem(cert_pem: str) -> str:
    """The device ID of a PEM certificate; ValueError if it is not one."""
    return device_id_of(load_cert_pem(cert_pem).public_bytes(serialization.Encoding.DER))


def load_cert_pem(cert_pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
    except UnicodeEncodeError:
        raise ValueError("certificate PEM is not ASCII") from None


def id_from_bytes(digest: bytes) -> str:
    if len(digest) != 32:
        raise InvalidDeviceId(f"a device ID is 32 bytes, not {len(digest)}")
    return base64.b32encode(digest).decode("ascii").rstrip("=")


def id_to_bytes(device_id: str) -> bytes:
    """The 32 raw bytes of a full device ID (for compact wire formats)."""
    full = parse_device_id(device_id)
    return base64.b32decode(full + "====")


def normalize(text: str) -> str:
    """Upper-case, drop dashes and whitespace, check the alphabet; any length up to a full ID."""
    cleaned = "".join(text.split()).replace("-", "").upper()
    if not cleaned:
        raise InvalidDeviceId("empty device ID")
    bad = sorted(set(cleaned) - _ALPHABET)
    if bad:
        raise InvalidDeviceId(
            f"invalid device ID {text!r}: unexpected {''.join(bad)!r} (IDs use A-Z and 2-7)"
        )
    if len(cleaned) > ID_LEN:
        raise InvalidDeviceId(f"invalid device ID {text!r}: longer than {ID_LEN} characters")
    return cleaned


def parse_device_id(text: str) -> str:
    """A full device ID in canonical form (52 upper-case characters, no dashes)."""
    cleaned = normalize(text)
    if len(cleaned) != ID_LEN:
        raise InvalidDeviceId(f"invalid device ID {text!r}: a full ID has {ID_LEN} characters")
    try:
        canonical = id_from_bytes(base64.b32decode(cleaned + "===="))
    except binascii.Error:
        canonical = ""
    # The last character carries 4 padding bits; only one spelling of each ID is accepted.
    if canonical != cleaned:
        raise InvalidDeviceId(
            f"invalid device ID {text!r}: not a valid ID (check the last characters)"
        )
    return cleaned


def parse_prefix(text: str) -> str:
    """A prefix of at least MIN_PREFIX characters, or a full ID, in canonical form."""
    cleaned = normalize(text)
    if len(cleaned) < MIN_PREFIX:
        raise InvalidDeviceId(
            f"device ID {text!r} is too short: give at least {MIN_PREFIX} characters"
        )
    return parse_device_id(cleaned) if len(cleaned) == ID_LEN else cleaned


def grouped(device_id: str) -> str:
    return "-".join(device_id[i : i + GROUP_LEN] for i in range(0, len(device_id), GROUP_LEN))


def short(device_id: str) -> str:
    return device_id[:MIN_PREFIX]


# --- the identity files ----------------------------------------------------------------------


def load(state_dir: Path) -> Identity:
    """Load the identity; IdentityError if it is missing, unreadable or inconsistent."""
    identity = _load(state_dir)
    if identity is None:
        raise IdentityError(
            f"no identity in {state_dir} (neither {KEY_FILE} nor {CERT_FILE}); "
            "`ollana serve` or `ollana device show` creates one"
        )
    return identity


def load_or_create(state_dir: Path, hostname: str | None = None) -> Identity:
    """Load the identity, creating it only when both files are absent (first use)."""
    try:
        identity = _load(state_dir)
    except IdentityError:
        # Maybe half written by a process creating it right now (it holds the lock until both
        # files are there): read again under the lock before calling it broken.
        identity = None
    if identity is not None:
        return identity
    with _creation_lock(state_dir):
        # Another process (a CLI command next to a starting serve) may have just created it.
        identity = _load(state_dir)
        if identity is not None:
            return identity
        identity = _create(state_dir, hostname)
    log.info("identity_created", device_id=identity.grouped, cert=str(identity.cert_path))
    return identity


def reset(state_dir: Path, hostname: str | None = None) -> tuple[str | None, Identity]:
    """Replace the identity on purpose. Returns (the old ID if readable, the new identity)."""
    with _creation_lock(state_dir):
        try:
            old: str | None = load(state_dir).device_id
        except IdentityError:
            old = None
        identity = _create(state_dir, hostname)
    log.warning(
        "identity_reset",
        old_device_id=grouped(old) if old else None,
        device_id=identity.grouped,
        note="devices paired with this one must allow it again",
    )
    return old, identity


def new_key_and_cert(hostname: str) -> tuple[bytes, str]:
    """A fresh P-256 key (PKCS#8 PEM) and its self-signed certificate (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    # ub-common-name is 64 characters; the CN only helps a human reading the certificate.
    cn = f"ollana {hostname}".strip()[:64]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _paths(state_dir: Path) -> tuple[Path, Path]:
    return state_dir / KEY_FILE, state_dir / CERT_FILE


def _load(state_dir: Path) -> Identity | None:
    key_path, cert_path = _paths(state_dir)
    key_bytes = _read(key_path)
    cert_bytes = _read(cert_path)
    if key_bytes is None and cert_bytes is None:
        return None
    if key_bytes is None:
        raise IdentityError(
            f"{key_path} is missing but {cert_path} exists; "
            f"restore the key from a backup, or {_RESET_HINT}"
        )
    if cert_bytes is None:
        raise IdentityError(
            f"{cert_path} is missing but {key_path} exists; "
            f"restore it from a backup, or {_RESET_HINT}"
        )
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The parser's message is not shown: it is useless to the user and the file is secret.
        raise IdentityError(
            f"{key_path} is not a readable private key (corrupt?); "
            f"restore it from a backup, or {_RESET_HINT}"
        ) from None
    try:
        cert = x509.load_pem_x509_certificate(cert_bytes)
    except ValueError as exc:
        raise IdentityError(
            f"{cert_path} is not a readable certificate ({exc}); "
            f"restore it from a backup, or {_RESET_HINT}"
        ) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise IdentityError(
            f"{key_path} does not match {cert_path} (one of them was replaced); "
            f"restore both from the same backup, or {_RESET_HINT}"
        )
    _tighten_key_mode(key_path)
    der = cert.public_bytes(serialization.Encoding.DER)
    return Identity(
        device_id=device_id_of(der),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        cert_der=der,
        cert_path=cert_path,
        key_path=key_path,
    )


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IdentityError(
            f"cannot read {path}: {exc.strerror}; run ollana as the user that owns {path.parent}"
        ) from None


def _tighten_key_mode(key_path: Path) -> None:
    try:
        mode = key_path.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(key_path, 0o600)
            log.warning("identity_key_mode_fixed", path=str(key_path), was=oct(mode), now="0o600")
    except OSError:
        pass  # not ours to change (read-only state dir, other owner): loading still works


@contextmanager
def _creation_lock(state_dir: Path) -> Iterator[None]:
    try:
        private_dir(state_dir)
        fd = open_lock(state_dir / LOCK_FILE)
    except OSError as exc:
        raise IdentityError(
            f"cannot create the identity in {state_dir}: {exc.strerror}; "
            "set OLLANA_HOME or --state-dir to a writable directory"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _create(state_dir: Path, hostname: str | None) -> Identity:
    key_path, cert_path = _paths(state_dir)
    key_pem, cert_pem = new_key_and_cert(hostname if hostname is not None else socket.gethostname())
    try:
        private_dir(state_dir)
        # Key first: a crash between the two leaves a mismatch, which is reported, not papered over.
        write_atomic(key_path, key_pem, 0o600)
        write_atomic(cert_path, cert_pem.encode("ascii"), 0o644)
    except OSError as exc:
        raise IdentityError(
            f"cannot write the identity in {state_dir}: {exc.strerror}; "
            "set OLLANA_HOME or --state-dir to a writable directory"
        ) from exc
    identity = _load(state_dir)
    assert identity is not None
    return identity
