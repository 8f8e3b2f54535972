"""`weft serve --auth`: the builtin auth plugin in front of the HTTP API and
the gRPC API, driven by the official openai client and grpc stubs."""
import hashlib

import grpc
import openai
import pytest

from conftest import Server

KEY = "sk-acme-test-key"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    auth = tmp_path_factory.mktemp("auth") / "auth.toml"
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    auth.write_text(f'[key.acme]\nprimary = "sha256:{digest}"\n[tenant.acme]\nscopes = "chat,completions,models"\n')
    server = Server("--auth", str(auth))
    yield server
    server.stop()


def test_the_openai_client_authenticates_with_its_api_key(guarded):
    ok = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key=KEY, max_retries=0)
    r = ok.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)
    assert r.choices[0].message.content is not None
    assert [m.id for m in ok.models.list()]
    wrong = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.completions.create(model="default", prompt="Hi", max_tokens=2)
    assert e.value.code == "invalid_api_key"


def test_grpc_calls_authenticate_with_metadata(guarded, pb):
    m, services = pb
    with grpc.insecure_channel(guarded.grpc) as channel:
        stub = services.GenerationStub(channel)
        request = m.GenerateRequest(model="default", prompt="Hello", sampling=m.SamplingParameters(max_tokens=3))
        with pytest.raises(grpc.RpcError) as e:
            stub.Generate(request)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        r = stub.Generate(request, metadata=[("authorization", f"Bearer {KEY}")])
        assert r.choices[0].tokens
        # acme's scopes leave out tokenize.
        with pytest.raises(grpc.RpcError) as e:
            stub.Tokenize(m.TokenizeRequest(prompt="Hello"), metadata=[("authorization", f"Bearer {KEY}")])
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_rate_limit_class_from_the_config_file_gives_the_openai_client_a_rate_limit_error(tmp_path, pb):
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    auth = tmp_path / "auth.toml"
    auth.write_text(f'[key.acme]\nprimary = "sha256:{digest}"\n[tenant.acme]\nrate-limit-class = "trial"\n')
    config = tmp_path / "weft.toml"
    config.write_text(f'auth = "{auth}"\n[rate-limits.trial]\nrequests-per-minute = 2\n')
    server = Server("--config", str(config))
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
        for _ in range(2):
            client.completions.create(model="default", prompt="Hi", max_tokens=2)
        with pytest.raises(openai.RateLimitError) as e:
            client.completions.create(model="default", prompt="Hi", max_tokens=2)
        assert e.value.code == "rate_limit_exceeded" and int(e.value.response.headers["retry-after"]) >= 1
        m, services = pb
        with grpc.insecure_channel(server.grpc) as channel:
            stub = services.GenerationStub(channel)
            request = m.GenerateRequest(model="default", prompt="Hi", sampling=m.SamplingParameters(max_tokens=2))
            with pytest.raises(grpc.RpcError) as e:
                stub.Generate(request, metadata=[("authorization", f"Bearer {KEY}")])
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.stop()
