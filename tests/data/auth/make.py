"""Regenerate the auth test fixtures: test-only RS256 and ES256 key pairs
(`openssl`), and JWTs signed with them and with an HS256 secret, valid
until 2100 or expired in 2000. The private keys exist only to sign these
fixtures.

    python3 tests/data/auth/make.py
"""
import base64
import hashlib
import hmac
import json
import pathlib
import subprocess

HERE = pathlib.Path(__file__).resolve().parent
HS256_SECRET = b"weft-test-hs256-secret"
FUTURE, PAST = 4102444800, 946684800  # 2100-01-01, 2000-01-01


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


def der_to_raw(der: bytes) -> bytes:
    """An ECDSA DER signature as JWS wants it: r and s, 32 bytes each."""
    assert der[0] == 0x30
    i = 2
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        out += der[i + 2:i + 2 + n].lstrip(b"\0").rjust(32, b"\0")
        i += 2 + n
    return out


def sign(alg: str, claims: dict) -> str:
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signed = f"{head}.{body}".encode()
    if alg == "HS256":
        sig = hmac.new(HS256_SECRET, signed, hashlib.sha256).digest()
    elif alg == "RS256":
        sig = openssl("dgst", "-sha256", "-sign", str(HERE / "rs256-private.pem"), data=signed)
    else:
        sig = der_to_raw(openssl("dgst", "-sha256", "-sign", str(HERE / "es256-private.pem"), data=signed))
    return f"{head}.{body}.{b64(sig)}"


def main():
    if not (HERE / "rs256-private.pem").exists():
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(HERE / "rs256-private.pem"))
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(HERE / "es256-private.pem"))
    for alg in ("rs256", "es256"):
        (HERE / f"{alg}-public.pem").write_bytes(openssl("pkey", "-in", str(HERE / f"{alg}-private.pem"), "-pubout"))
    base = {"sub": "globex", "aud": "weft", "iss": "https://issuer.test", "exp": FUTURE}
    tokens = {
        "hs256": sign("HS256", base),
        "rs256": sign("RS256", {**base, "scope": "chat models", "models": ["default"]}),
        "es256": sign("ES256", {**base, "tenant": "initech"}),
        "expired": sign("HS256", {**base, "exp": PAST}),
        "not_yet": sign("HS256", {**base, "nbf": FUTURE - 10}),
        "wrong_audience": sign("HS256", {**base, "aud": "someone-else"}),
        "wrong_issuer": sign("HS256", {**base, "iss": "https://elsewhere.test"}),
        "no_exp": sign("HS256", {k: v for k, v in base.items() if k != "exp"}),
        "none_alg": b64(b'{"alg":"none"}') + "." + b64(json.dumps(base).encode()) + ".",
    }
    # A valid signature over changed claims must not verify.
    head, body, sig = tokens["hs256"].split(".")
    tokens["tampered"] = ".".join([head, b64(json.dumps({**base, "sub": "mallory"}).encode()), sig])
    (HERE / "tokens.json").write_text(json.dumps(tokens, indent=2) + "\n")


if __name__ == "__main__":
    main()
