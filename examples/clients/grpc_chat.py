"""Stream a chat answer from Weft over gRPC, with stubs generated from our .proto.

    pip install grpcio grpcio-tools
    python3 examples/clients/grpc_chat.py [HOST:PORT]

HOST:PORT defaults to 127.0.0.1:50051 (where `weft serve` puts gRPC).
"""
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO = pathlib.Path(__file__).resolve().parents[2] / "host/server/proto"
out = tempfile.mkdtemp()
protoc.main(["protoc", f"-I{PROTO}", f"--python_out={out}", f"--grpc_python_out={out}", str(PROTO / "weft/v1/generation.proto")])
sys.path.insert(0, out)
from weft.v1 import generation_pb2 as pb, generation_pb2_grpc as rpc  # noqa: E402

target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
stub = rpc.GenerationStub(grpc.insecure_channel(target))
request = pb.GenerateRequest(
    chat=pb.Messages(messages=[pb.ChatMessage(role="user", content="Name three colours.")]),
    sampling=pb.SamplingParameters(max_tokens=32),
)
for chunk in stub.GenerateStream(request):
    print(chunk.text, end="", flush=True)
print()
