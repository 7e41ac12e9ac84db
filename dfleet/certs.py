"""``dfleet certs DIR``: a development CA and one fleet certificate signed by it.

    ca.pem            the fleet's CA (every process trusts it; clients of the gateway too)
    ca-key.pem        its key: keep it off the fleet's machines, it signs new members
    fleet.pem         certificate of every service (server and client use), with SANs
                      dfleet.internal (the name peers check), localhost, 127.0.0.1, ::1
                      and the names given with --name
    fleet-key.pem     its key (mode 0600)

For production, issue the same shape of certificates from your own CA (cert-manager,
a Vault PKI) and mount them as a Kubernetes Secret; see docs/security.md.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.tls import FLEET_SERVER_NAME

VALID_DAYS = 365


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "diffusion-fleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_names(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in [FLEET_SERVER_NAME, "localhost", "127.0.0.1", "::1", *names]:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def write_dev_certs(folder: str | Path, names: list[str] | None = None) -> dict[str, Path]:
    """Writes the files above into ``folder``; returns their paths by name."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=VALID_DAYS)
    ca_key = _key()
    ca = (x509.CertificateBuilder().subject_name(_name("diffusion-fleet dev CA"))
          .issuer_name(_name("diffusion-fleet dev CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    fleet_key = _key()
    fleet = (x509.CertificateBuilder().subject_name(_name(FLEET_SERVER_NAME))
             .issuer_name(ca.subject).public_key(fleet_key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now)
             .not_valid_after(until)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(_alt_names(names or []), critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                   ExtendedKeyUsageOID.CLIENT_AUTH]),
                            critical=False)
             .sign(ca_key, hashes.SHA256()))
    paths = {"ca": out / "ca.pem", "ca_key": out / "ca-key.pem", "cert": out / "fleet.pem",
             "key": out / "fleet-key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(paths["ca_key"], ca_key)
    paths["cert"].write_bytes(fleet.public_bytes(serialization.Encoding.PEM))
    _write_key(paths["key"], fleet_key)
    return paths


def tls_env(paths: dict[str, Path]) -> dict[str, str]:
    """The variables that turn TLS on for every service of a fleet."""
    return {"DFLEET_TLS_CERT": str(paths["cert"].resolve()),
            "DFLEET_TLS_KEY": str(paths["key"].resolve()),
            "DFLEET_TLS_CA": str(paths["ca"].resolve())}
