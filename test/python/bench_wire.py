"""Wire benchmark, Python side: a grpcio client streaming large messages to the grpc-js WireBench
server (src/bench/wire-bench-service.ts). Run by `noisescope bench wire`, which starts the servers;
standalone:

    .venv/bin/python test/python/bench_wire.py --addresses 127.0.0.1:PORT[,…] --sizes 1048576 --mib 256

Prints one JSON line per measurement: {"client","address","size","messages","bytes","seconds","serverCpuSeconds","repeat"}.
With several addresses (servers with different windows) each repeat visits every one in turn, so a
machine whose load drifts during the run biases none of them.
Each message is framed once (protobuf `Payload { bytes data = 1; }` written around the payload)
and sent as raw bytes, so the figure is the wire's, not Python serialisation's. The server's reply
(messages and bytes it decoded) is checked; a short count exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import grpc

UPLOAD_METHOD = "/noisescope.bench.v1.WireBench/Upload"
WARMUP_MESSAGES = 8
MAX_MESSAGE = 16 * 1024 * 1024


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def encode_payload(size: int) -> bytes:
    """`Payload { data = size bytes }`: field 1, wire type 2 (length-delimited)."""
    return b"\x0a" + _varint(size) + b"\x5a" * size


def decode_received(data: bytes) -> tuple[int, int, int]:
    """`Received { uint64 messages = 1; uint64 bytes = 2; uint64 server_cpu_micros = 3; }` → a tuple; absent fields are 0."""
    fields = {1: 0, 2: 0, 3: 0}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        value, pos = _read_varint(data, pos)
        fields[key >> 3] = value
    return fields[1], fields[2], fields[3]


def upload(stub: grpc.StreamUnaryMultiCallable, message: bytes, count: int) -> tuple[int, int, int]:
    return decode_received(stub(message for _ in range(count)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", required=True, help="HOST:PORT, comma-separated")
    parser.add_argument("--sizes", default=str(1 << 20), help="payload bytes, comma-separated")
    parser.add_argument("--mib", type=float, default=256, help="MiB sent per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    options = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
    addresses = args.addresses.split(",")
    channels = [grpc.insecure_channel(address, options=options) for address in addresses]
    stubs = [c.stream_unary(UPLOAD_METHOD, request_serializer=None, response_deserializer=None) for c in channels]
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            message = encode_payload(size)
            messages = max(1, round(args.mib * 1024 * 1024 / size))
            for stub in stubs:
                upload(stub, message, WARMUP_MESSAGES)  # connection, windows
            for repeat in range(args.repeats):
                for address, stub in zip(addresses, stubs):
                    start = time.perf_counter()
                    got_messages, got_bytes, server_cpu_micros = upload(stub, message, messages)
                    seconds = time.perf_counter() - start
                    if (got_messages, got_bytes) != (messages, messages * size):
                        print(f"bench_wire: {address} decoded {got_messages} messages / {got_bytes} bytes "
                              f"of {messages} / {messages * size}", file=sys.stderr)
                        return 1
                    print(json.dumps({"client": "python", "address": address, "size": size, "messages": messages,
                                      "bytes": got_bytes, "seconds": seconds,
                                      "serverCpuSeconds": server_cpu_micros / 1e6, "repeat": repeat}), flush=True)
    finally:
        for channel in channels:
            channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
