"""Certificates and keys for one run of the local kube-apiserver and Kafka broker.

Like envtest, every platform gets its own CA, a serving certificate for
127.0.0.1/localhost, an admin client certificate in ``system:masters`` and a
service-account signing key. Kafka's TLS listeners get a CA of their own, a broker
certificate for 127.0.0.1/localhost and a client certificate for mutual TLS, so the
product's clients are tested with hostname checking on. Nothing is reused between
platforms.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_LIFETIME_DAYS = 30
# The first address of the platform's service range (10.0.0.0/24), which the API server gives
# to the `kubernetes` Service.
KUBERNETES_SERVICE_IP = "10.0.0.1"
KUBERNETES_SERVICE_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class KafkaPki:
    """PEM files of the Kafka TLS listeners and of a client that authenticates by certificate.

    ``broker_pem`` holds the broker's unencrypted PKCS#8 key followed by its certificate:
    the one-file shape Kafka's PEM keystore reads.
    """

    ca_cert: Path
    broker_pem: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def at(cls, directory: Path) -> KafkaPki:
        """The file names :func:`generate_kafka` writes into ``directory``."""
        return cls(
            ca_cert=directory / "kafka-ca.crt",
            broker_pem=directory / "kafka-broker.pem",
            client_cert=directory / "kafka-client.crt",
            client_key=directory / "kafka-client.key",
        )

    def exists(self) -> bool:
        return all(path.is_file() for path in asdict(self).values())


@dataclass(frozen=True)
class ApiserverPki:
    """Paths of every PEM file the apiserver and its clients need."""

    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def _name(common_name: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_LIFETIME_DAYS))
    )


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(subject, ca_name, key.public_key())
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Name, x509.Certificate]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(common_name)
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca_name, ca_cert


def _loopback_sans() -> list[x509.GeneralName]:
    return [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]


def _write_private(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        path.write_bytes(data)
        path.chmod(0o600)


def generate_kafka(directory: Path) -> KafkaPki:
    """Write a fresh Kafka CA, broker keystore and mutual-TLS client pair into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_name, ca_cert = _ca("fintech-operator-local-kafka-ca")
    broker_cert, broker_key = _leaf(
        ca_key, ca_name, _name("kafka-broker"), ExtendedKeyUsageOID.SERVER_AUTH, _loopback_sans()
    )
    client_cert, client_key = _leaf(
        ca_key, ca_name, _name("fintech-operator"), ExtendedKeyUsageOID.CLIENT_AUTH
    )
    pki = KafkaPki.at(directory)
    _write_private(
        {
            pki.ca_cert: ca_cert.public_bytes(serialization.Encoding.PEM),
            pki.broker_pem: broker_key + broker_cert,
            pki.client_cert: client_cert,
            pki.client_key: client_key,
        }
    )
    return pki


def generate(directory: Path) -> ApiserverPki:
    """Write a fresh CA, serving and admin certificates and SA keys into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_name, ca_cert = _ca("fintech-operator-local-ca")
    # The `kubernetes` Service's ClusterIP and names: pods of `stack node` reach the API
    # server through them (kube-proxy), and check this certificate against them.
    sans = [
        *_loopback_sans(),
        x509.IPAddress(ipaddress.ip_address(KUBERNETES_SERVICE_IP)),
        *(x509.DNSName(name) for name in KUBERNETES_SERVICE_NAMES),
    ]
    serving = _leaf(ca_key, ca_name, _name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, sans)
    admin = _leaf(
        ca_key, ca_name, _name("admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files = {
        "ca.crt": ca_cert.public_bytes(serialization.Encoding.PEM),
        # Kept (owner-only) so `stack node` tests can sign serving certificates pods trust
        # through their service-account CA bundle.
        "ca.key": _key_pem(ca_key),
        "apiserver.crt": serving[0],
        "apiserver.key": serving[1],
        "admin.crt": admin[0],
        "admin.key": admin[1],
        "sa.key": _key_pem(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        path.chmod(0o600)
    return ApiserverPki(
        ca_cert=directory / "ca.crt",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
    )


def sign_serving(directory: Path, dns_names: list[str]) -> tuple[bytes, bytes]:
    """A serving certificate and key for ``dns_names`` from the CA kept in ``directory``."""
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the platform CA key is not an EC key")
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    return _leaf(
        ca_key, ca_cert.subject, _name(dns_names[0]), ExtendedKeyUsageOID.SERVER_AUTH, sans
    )
