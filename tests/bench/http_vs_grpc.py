#!/usr/bin/env python3
"""The same generation over HTTP (OpenAI JSON) and gRPC (protobuf), against
one running `weft serve`: latency per request and bytes on the wire.

    python3 tests/bench/http_vs_grpc.py [--http URL] [--grpc HOST:PORT] [--requests 40]

Each round sends the same greedy completion (`--max-tokens` tokens of a fixed
prompt) once over each transport, alternating, and reports the median and p90
latency of each and the response payload size: the HTTP body (JSON), and
the serialized protobuf message. Streaming is compared too: bytes of all SSE
`data:` lines against all streamed protobuf messages. Needs grpcio and
grpcio-tools (tests/python/requirements.txt).
"""
import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time
import urllib.request

import grpc
from grpc_tools import protoc

PROTO = pathlib.Path(__file__).resolve().parents[2] / "host/server/proto"


def stubs():
    out = tempfile.mkdtemp()
    protoc.main(["protoc", f"-I{PROTO}", f"--python_out={out}", f"--grpc_python_out={out}", str(PROTO / "weft/v1/generation.proto")])
    sys.path.insert(0, out)
    from weft.v1 import generation_pb2, generation_pb2_grpc

    return generation_pb2, generation_pb2_grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", default="http://127.0.0.1:8080")
    ap.add_argument("--grpc", default="127.0.0.1:50051")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    pb, rpc = stubs()
    stub = rpc.GenerationStub(grpc.insecure_channel(args.grpc))
    prompt = "The history of the river valley begins with"
    body = json.dumps({"prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0, "ignore_eos": True}).encode()
    request = pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParameters(max_tokens=args.max_tokens, temperature=0, ignore_eos=True))
    times = {"http": [], "grpc": []}
    sizes = {"http": 0, "grpc": 0}
    for _ in range(args.requests):
        start = time.perf_counter()
        req = urllib.request.Request(f"{args.http}/v1/completions", data=body, headers={"content-type": "application/json"})
        with urllib.request.urlopen(req) as r:
            payload = r.read()
        times["http"].append(time.perf_counter() - start)
        sizes["http"] = len(payload)
        start = time.perf_counter()
        reply = stub.Generate(request)
        times["grpc"].append(time.perf_counter() - start)
        sizes["grpc"] = reply.ByteSize()
    stream_body = json.loads(body)
    stream_body["stream"] = True
    req = urllib.request.Request(f"{args.http}/v1/completions", data=json.dumps(stream_body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        sse = sum(len(line) for line in r.read().split(b"\n") if line.startswith(b"data: "))
    streamed = sum(chunk.ByteSize() for chunk in stub.GenerateStream(request))
    ms = lambda v: 1000 * v  # noqa: E731
    print("| transport | latency p50 (ms) | p90 (ms) | response payload (bytes) | streamed payload (bytes) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, stream_bytes in (("HTTP (JSON)", sse), ("gRPC (protobuf)", streamed)):
        key = "http" if name.startswith("HTTP") else "grpc"
        t = sorted(times[key])
        print(f"| {name} | {ms(statistics.median(t)):.1f} | {ms(t[int(len(t) * 0.9) - 1]):.1f} | {sizes[key]} | {stream_bytes} |")


if __name__ == "__main__":
    main()
