"""A throwaway certificate authority for SeaweedFS's gRPC mutual TLS (the embedded S3).

:func:`write_grpc_certificates` makes a fresh CA and one certificate signed by it (EC P-256,
valid for server and client authentication), and writes ``ca.crt``, ``grpc.crt`` and
``grpc.key`` with mode 0600 into a directory. The CA's private key is never written: nothing
else can be signed with it once the certificate exists, so only a program holding
``grpc.key`` (the stack's own ``weed``) passes the handshake. SeaweedFS does not check host
names, so the same certificate serves every component (master, volume, filer, S3, admin,
worker) and every component's client side.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.devstack.credentials import write_private

__all__ = ["GRPC_CERT_FILES", "write_grpc_certificates"]

#: the files :func:`write_grpc_certificates` writes, by role
GRPC_CERT_FILES = {"ca": "ca.crt", "cert": "grpc.crt", "key": "grpc.key"}
#: validity of the certificates (they are made anew at every start)
VALIDITY = dt.timedelta(days=30)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_grpc_certificates(directory: Path, common_name: str = "service4ct-weed") -> dict[str, Path]:
    """A new CA and a certificate for ``common_name`` in ``directory`` (0600); role → path."""
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + VALIDITY
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{common_name} CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.DNSName(common_name)]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = {role: directory / name for role, name in GRPC_CERT_FILES.items()}
    write_private(files["ca"], ca.public_bytes(pem).decode())
    write_private(files["cert"], cert.public_bytes(pem).decode())
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(files["key"], key_pem.decode())
    return files
