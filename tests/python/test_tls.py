"""HTTPS with rustls: a self-signed certificate made with the `openssl`
command, the official `openai` client trusting it, HTTP/2 and HTTP/1.1
over TLS with curl, and a plain-HTTP request refused."""
import ssl
import subprocess

import httpx2 as httpx
import pytest
from openai import OpenAI

from conftest import Server


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    s = Server("--tls-cert", str(cert), "--tls-key", str(key))
    yield s, cert
    s.stop()


def test_the_openai_client_talks_https(tls_server):
    server, cert = tls_server
    assert server.url.startswith("https://")
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(cert))))
    r = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("flag, version", [("--http2", "2"), ("--http1.1", "1.1")])
def test_both_http_versions_are_negotiated(tls_server, flag, version):
    server, cert = tls_server
    out = subprocess.run(
        ["curl", "-sS", flag, "--cacert", str(cert), "-o", "/dev/null", "-w", "%{http_version} %{http_code}", f"{server.url}/health"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.stdout == f"{version} 200", out.stderr


def test_plain_http_to_the_tls_port_gets_no_answer(tls_server):
    server, _ = tls_server
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url.replace("https://", "http://") + "/health", timeout=5)


def test_a_bad_certificate_file_stops_the_server_with_its_path(tmp_path):
    bogus = tmp_path / "nope.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(RuntimeError) as e:
        Server("--tls-cert", str(bogus), "--tls-key", str(bogus))
    assert "nope.pem" in str(e.value)


def test_grpc_is_served_over_tls_too(tls_server):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server, cert = tls_server
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(server.grpc, credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(server.grpc) as channel:
        with pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
