"""REDIS_URL's ssl_* parameters: a wrong one stops start-up with one line naming it (redis-py would
fail only at each connect), and a refused handshake is one line that says which parameter to fix."""

from __future__ import annotations

import ssl

import pytest
from redis.exceptions import ConnectionError

from shared.connection import tls_refusal
from shared.settings import SettingsError, load_settings

URL = "rediss://127.0.0.1:6380/0"


@pytest.fixture
def pem(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    return junk


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("ssl_ca_certs={missing}", "ssl_ca_certs="),
        ("ssl_ca_certs={junk}", "ssl_ca_certs is not a PEM CA certificate"),
        ("ssl_certfile={junk}", "ssl_certfile and ssl_keyfile are not a PEM certificate"),
        ("ssl_keyfile={junk}", "ssl_keyfile needs ssl_certfile"),
        ("ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of none, optional, required"),
        ("ssl_ciphers=NOT-A-CIPHER", "ssl_ciphers is not an OpenSSL cipher list"),
        ("ssl_ca_cert={junk}", "ssl_ca_cert is not a parameter it takes"),
    ],
)
def test_a_wrong_ssl_parameter_stops_start_up_with_one_line_naming_it(clean_env, pem, query, says):
    clean_env.setenv("REDIS_URL", f"rediss://user:s3cret@127.0.0.1:6380/0?{query}".format(
        missing=pem.parent / "missing.pem", junk=pem))  # fmt: skip
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("REDIS_URL: ") and says in message, message
    assert "\n" not in message and "s3cret" not in message


def test_ssl_parameters_on_a_plain_redis_url_are_refused(clean_env, pem):
    clean_env.setenv("REDIS_URL", f"redis://127.0.0.1:6380/0?ssl_ca_certs={pem}")
    with pytest.raises(SettingsError, match="ssl_ca_certs needs rediss://"):
        load_settings()


def refused(cause: BaseException) -> ConnectionError:
    try:
        try:
            raise cause
        except OSError:
            raise ConnectionError("Error 1 connecting to 127.0.0.1:6380.") from None
    except ConnectionError as e:
        return e


def test_a_refused_handshake_names_the_parameter_to_fix():
    untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    untrusted.verify_message = "self-signed certificate in certificate chain"
    line = tls_refusal(refused(untrusted), URL + "?ssl_ca_certs=/etc/ca.pem")
    assert line is not None and "self-signed certificate" in line and "set ssl_ca_certs in REDIS_URL" in line
    alert = ssl.SSLError(1, "tlsv1 alert unknown ca")
    alert.reason = "TLSV1_ALERT_UNKNOWN_CA"
    line = tls_refusal(refused(alert), URL)
    assert line is not None and "refused this client's TLS certificate" in line and "ssl_certfile" in line
    assert tls_refusal(refused(ConnectionRefusedError(111, "refused")), URL) is None


def test_a_certificate_refused_while_the_messenger_runs_is_named_in_the_tool_error():
    from messenger.calls import unavailable
    from shared.settings import Settings

    untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    untrusted.verify_message = "certificate has expired"
    error = unavailable(refused(untrusted), Settings(redis_url=URL))
    assert "certificate has expired" in error.message and "ssl_ca_certs in REDIS_URL" in error.message
