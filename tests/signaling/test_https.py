"""HTTPS and WSS on ``--port`` with ``--tls-cert``/``--tls-key`` (issue 12): the join URLs are
``https://``, the API answers over TLS, and two real Chromium pages hold a call over ``https://``
with a test CA that Chromium trusts (an NSS database in the browser's own HOME)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .browser_support import (
    API_KEY,
    CHROMIUM,
    CHROMIUM_ARGS,
    ParleyServer,
    chromium_available,
    participant_id,
    wait_for_media,
    wait_for_state,
)
from .browser_support import free_port as free_tcp_udp_port

AV = ("camera", "microphone")


class ThrowawayCA:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost, as PEM files."""

    def __init__(self, directory: Path) -> None:
        now = datetime.datetime.now(datetime.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "parley test CA")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )  # fmt: skip
            .sign(self.key, hashes.SHA256())
        )
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(name)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_path = directory / "ca.pem"
        self.cert_path = directory / "server.pem"
        self.key_path = directory / "server.key"
        self.ca_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.cert_path.write_bytes(
            server.public_bytes(serialization.Encoding.PEM)
            + self.cert.public_bytes(serialization.Encoding.PEM)
        )
        self.key_path.write_bytes(
            server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def browser_home(self, home: Path) -> Path:
        """A HOME whose NSS database (what Chromium on Linux trusts) holds this CA."""
        nssdb = home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True)
        subprocess.run(
            ["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, timeout=30
        )
        subprocess.run(
            ["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "parley-test-ca",
             "-i", str(self.ca_path)],
            check=True, timeout=30,
        )  # fmt: skip
        return home


class HttpsServer(ParleyServer):
    """``parley serve`` with the test CA's certificate: HTTPS, WSS and TURN over TLS."""

    def __init__(self, ca: ThrowawayCA) -> None:
        super().__init__(
            "--tls-cert", str(ca.cert_path), "--tls-key", str(ca.key_path),
            "--turn-tls-port", str(free_tcp_udp_port()),
        )  # fmt: skip
        self.ca = ca
        self.base_url = f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        # ParleyServer polls /healthz with urllib's default context: trust the test CA there
        context = self.ca.client_context()
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
        previous = urllib.request._opener  # type: ignore[attr-defined]
        urllib.request.install_opener(opener)
        try:
            super().start()
        finally:
            urllib.request.install_opener(previous)  # type: ignore[arg-type]

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"{self.base_url}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10, context=self.ca.client_context()) as r:
            raw = r.read()
            return json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def ca() -> Iterator[ThrowawayCA]:
    with tempfile.TemporaryDirectory(prefix="parley-ca-") as directory:
        yield ThrowawayCA(Path(directory))


@pytest.fixture(scope="module")
def https_server(ca: ThrowawayCA) -> Iterator[HttpsServer]:
    server = HttpsServer(ca)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_api_and_join_urls_are_https_and_plain_http_is_refused(https_server: HttpsServer) -> None:
    session = https_server.create_session("conv-https")
    assert session["agent_url"].startswith(f"{https_server.base_url}/join/")
    assert session["customer_url"].startswith("https://")
    with urllib.request.urlopen(
        session["customer_url"], timeout=10, context=https_server.ca.client_context()
    ) as page:
        assert page.status == 200
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{https_server.port}/healthz", timeout=5)
    # a client that does not trust the test CA refuses the certificate
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{https_server.base_url}/healthz", timeout=5)


@pytest.mark.browser
@pytest.mark.timeout(90)
@pytest.mark.skipif(not chromium_available(), reason=f"{CHROMIUM} is not installed")
def test_two_pages_hold_a_call_over_https_with_a_trusted_test_ca(
    https_server: HttpsServer, ca: ThrowawayCA
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    session = https_server.create_session("conv-https-call")
    with tempfile.TemporaryDirectory(prefix="parley-chromium-home-") as home:
        ca.browser_home(Path(home))
        with sync_api.sync_playwright() as p:
            # no --ignore-certificate-errors: the page loads only because the CA is trusted
            browser = p.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, env={"HOME": home}
            )
            try:
                pages = []
                for url, name in ((session["agent_url"], "Ann"), (session["customer_url"], "Carl")):
                    context = browser.new_context(permissions=["camera", "microphone"])
                    page = context.new_page()
                    page.set_default_timeout(20_000)
                    page.goto(url)
                    assert page.evaluate("() => window.isSecureContext") is True
                    assert page.evaluate("() => location.protocol") == "https:"
                    page.get_by_label("Your name").fill(name)
                    page.get_by_role("button", name="Join", exact=True).click()
                    wait_for_state(page, "connected")
                    pages.append(page)
                agent, customer = pages
                wait_for_media(agent, {participant_id(customer): AV})
                wait_for_media(customer, {participant_id(agent): AV})
            finally:
                browser.close()
            # the same browser without the CA in its NSS database refuses the page
            untrusting = p.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, env={"HOME": str(Path(home) / "x")}
            )
            try:
                page = untrusting.new_page()
                with pytest.raises(sync_api.Error, match="ERR_CERT_AUTHORITY_INVALID"):
                    page.goto(session["customer_url"])
            finally:
                untrusting.close()
