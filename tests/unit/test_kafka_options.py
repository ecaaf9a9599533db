"""events/kafka.py: settings become the same connection options for every Kafka client.

Pure: certificates come from stack/certs.py and nothing connects anywhere. The real
broker's side of these options is proven in tests/integration/test_kafka_security.py.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import IllegalSaslStateError, KafkaConnectionError, SaslAuthenticationFailed

from fintech_devstack import certs
from fintech_operator import config
from fintech_operator.events import kafka

BASE = {"DATABASE_URL": "postgresql://x@127.0.0.1/db", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9093"}
SECRET = "s3cret-not-for-logs"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> certs.KafkaPki:
    return certs.generate_kafka(tmp_path_factory.mktemp("kafka-pki"))


def _sasl(protocol: str = "SASL_PLAINTEXT", **extra: str) -> dict[str, str]:
    return {
        **BASE,
        "FINTECH_KAFKA_SECURITY_PROTOCOL": protocol,
        "FINTECH_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "FINTECH_KAFKA_SASL_USERNAME": "fintech",
        "FINTECH_KAFKA_SASL_PASSWORD": SECRET,
        **extra,
    }


def test_plaintext_options_carry_no_security() -> None:
    """The default is exactly the brokers and PLAINTEXT: nothing else is sent."""
    assert kafka.client_options(config.load(BASE)) == {
        "bootstrap_servers": "127.0.0.1:9093",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_plaintext_options_log_in_without_tls() -> None:
    """SASL_PLAINTEXT: mechanism, user and password, and no TLS context."""
    options = kafka.client_options(config.load(_sasl()))
    assert options == {
        "bootstrap_servers": "127.0.0.1:9093",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "fintech",
        "sasl_plain_password": SECRET,
    }


def test_sasl_ssl_trusts_the_given_ca_and_checks_host_names(pki: certs.KafkaPki) -> None:
    """SASL_SSL: a TLS context that requires a verified chain from our CA and the host name."""
    options = kafka.client_options(
        config.load(_sasl("SASL_SSL", FINTECH_KAFKA_SSL_CA_FILE=str(pki.ca_cert)))
    )
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is True
    assert context.verify_mode == ssl.CERT_REQUIRED
    subjects = " ".join(str(ca["subject"]) for ca in context.get_ca_certs())
    assert "fintech-operator-local-kafka-ca" in subjects
    assert options["sasl_plain_username"] == "fintech"


def test_ssl_without_a_ca_file_trusts_the_system_store() -> None:
    """Managed services sign with public CAs: no CA file means the system's trust store."""
    options = kafka.client_options(config.load({**BASE, "FINTECH_KAFKA_SECURITY_PROTOCOL": "SSL"}))
    assert "sasl_mechanism" not in options
    context = options["ssl_context"]
    assert context.check_hostname is True
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_mutual_tls_loads_the_client_certificate(pki: certs.KafkaPki) -> None:
    """A certificate and its key are loaded; a key that does not match fails naming both."""
    env = {
        **BASE,
        "FINTECH_KAFKA_SECURITY_PROTOCOL": "SSL",
        "FINTECH_KAFKA_SSL_CA_FILE": str(pki.ca_cert),
        "FINTECH_KAFKA_SSL_CERT_FILE": str(pki.client_cert),
        "FINTECH_KAFKA_SSL_KEY_FILE": str(pki.client_key),
    }
    assert isinstance(kafka.client_options(config.load(env))["ssl_context"], ssl.SSLContext)
    # The broker's certificate with the client's key: a pair that does not belong together.
    wrong = {**env, "FINTECH_KAFKA_SSL_CERT_FILE": str(pki.broker_pem)}
    with pytest.raises(kafka.KafkaAccessError, match="FINTECH_KAFKA_SSL_CERT_FILE"):
        kafka.client_options(config.load(wrong))


def test_a_ca_file_that_is_not_pem_fails_naming_the_variable(tmp_path: Path) -> None:
    """A readable file that holds no certificate is refused when options are made."""
    junk = tmp_path / "ca.crt"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    env = {**BASE, "FINTECH_KAFKA_SECURITY_PROTOCOL": "SSL", "FINTECH_KAFKA_SSL_CA_FILE": str(junk)}
    with pytest.raises(kafka.KafkaAccessError, match="FINTECH_KAFKA_SSL_CA_FILE"):
        kafka.client_options(config.load(env))


def test_the_password_file_is_read_again_for_each_client(tmp_path: Path) -> None:
    """A rotated Secret reaches the next client; the file's trailing newline is not part of
    the password; a file gone after start-up fails naming the variable."""
    path = tmp_path / "password"
    path.write_text("first\n")
    settings = config.load(
        _sasl(FINTECH_KAFKA_SASL_PASSWORD="", FINTECH_KAFKA_SASL_PASSWORD_FILE=str(path))
    )
    assert kafka.client_options(settings)["sasl_plain_password"] == "first"
    path.write_text("second\r\n")
    assert kafka.client_options(settings)["sasl_plain_password"] == "second"
    path.write_text("")
    with pytest.raises(kafka.KafkaAccessError, match=r"FINTECH_KAFKA_SASL_PASSWORD_FILE: .* empty"):
        kafka.client_options(settings)
    path.unlink()
    with pytest.raises(kafka.KafkaAccessError, match="FINTECH_KAFKA_SASL_PASSWORD_FILE"):
        kafka.client_options(settings)


def test_an_oversized_password_file_is_refused(tmp_path: Path) -> None:
    """A path pointing at something large (not a Secret key) is refused, not read whole."""
    path = tmp_path / "password"
    path.write_text("pw")
    settings = config.load(
        _sasl(FINTECH_KAFKA_SASL_PASSWORD="", FINTECH_KAFKA_SASL_PASSWORD_FILE=str(path))
    )
    path.write_bytes(b"x" * (kafka.PASSWORD_FILE_BYTES_MAX + 1))
    with pytest.raises(kafka.KafkaAccessError, match="larger than"):
        kafka.client_options(settings)


def test_access_errors_are_connection_errors() -> None:
    """Code that retries an unreachable broker (the relay) retries a refused login too."""
    assert issubclass(kafka.KafkaAccessError, KafkaConnectionError)


async def test_every_aiokafka_client_accepts_the_options(pki: certs.KafkaPki) -> None:
    """aiokafka's producer, consumer and admin client take the options as they are (a
    misspelled keyword would be refused here, not on a customer's cluster)."""
    settings = config.load(_sasl("SASL_SSL", FINTECH_KAFKA_SSL_CA_FILE=str(pki.ca_cert)))
    producer = AIOKafkaProducer(**kafka.client_options(settings))
    consumer = AIOKafkaConsumer(**kafka.client_options(settings), group_id=None)
    admin = AIOKafkaAdminClient(**kafka.client_options(settings))
    try:
        assert producer.client._security_protocol == "SASL_SSL"
        assert consumer._client._sasl_plain_username == "fintech"
        assert admin._client._sasl_mechanism == "SCRAM-SHA-512"
    finally:
        await producer.stop()
        await consumer.stop()
        await admin.close()


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (
            SaslAuthenticationFailed("invalid credentials"),
            "refused the SCRAM-SHA-512 login of user 'fintech': authentication failed",
        ),
        (
            ssl.SSLCertVerificationError("certificate verify failed"),
            "TLS handshake with Kafka at 127.0.0.1:9093 failed",
        ),
        (IllegalSaslStateError(), "does not expect a SASL login"),
        (KafkaConnectionError("closed"), "FINTECH_KAFKA_SECURITY_PROTOCOL matches the listener"),
    ],
)
def test_refusals_say_what_failed_and_what_to_check(error: BaseException, says: str) -> None:
    """Each kind of refusal gets its own sentence with the variables to check, and the
    password is never part of it."""
    message = kafka.refusal(config.load(_sasl()), "127.0.0.1:9093", error)
    assert says in message
    assert "FINTECH_KAFKA_" in message
    assert SECRET not in message


def test_access_errors_read_as_one_sentence() -> None:
    """The message is the sentence itself, not prefixed by the class name a second time."""
    assert str(kafka.KafkaAccessError("Kafka at h:1 refused")) == "Kafka at h:1 refused"
