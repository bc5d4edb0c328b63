"""Hostile requests for the service: the fuzz corpus, decompression bombs, animated PNGs and slow uploads.

Shared by the service tests (tests/integration/test_service.py) and the reliability benchmark
(benchmarks/service_reliability.py), so the figures and the tests are about the same inputs.
"""

from __future__ import annotations

import io
import json
import random
import socket
import time
import zlib
from typing import Any

import numpy as np
from PIL import Image


def png16_bomb(side: int) -> bytes:
    """A greyscale 16-bit PNG of ``side``² pixels that compresses to a few tens of KB (a flat gradient):
    cheap to send, 8 bytes a pixel to decode naively in float64."""
    row = np.linspace(0, 65535, side).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(np.broadcast_to(row, (side, side)).copy()).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def apng(side: int, frames: int) -> bytes:
    """An animated PNG of ``frames`` frames of ``side``² pixels (only the first one should ever be decoded)."""
    images = [Image.new("RGB", (side, side), (i * 7 % 256, 90, 160)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="PNG", save_all=True, append_images=images[1:], duration=10, compress_level=9)
    return buf.getvalue()


def slow_upload(host: str, port: int, source: str, path: str = "/predict", seconds: float = 30.0) -> str:
    """Open a connection from ``source`` (a loopback address such as 127.0.0.2), send the headers of a
    1 MB multipart upload and then one byte a second until the server answers or closes, or ``seconds``
    pass. Returns the status line the server sent ('' if none)."""
    sock = socket.create_connection((host, port), timeout=seconds, source_address=(source, 0))
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
            "Content-Length: 1000000\r\n\r\n--zz\r\n"
        )
        sock.sendall(head.encode())
        sock.settimeout(1.0)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                answer = sock.recv(256)
                return answer.split(b"\r\n", 1)[0].decode(errors="replace") if answer else ""
            except TimeoutError:
                pass
            try:
                sock.sendall(b"x")
            except OSError:
                return ""
        return ""
    finally:
        sock.close()


def fuzz_requests(n: int, good: bytes, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` malformed requests as ``httpx.Client.post`` keyword arguments plus ``path``: random bodies and
    content types, multipart with damaged images (truncated, bit-flipped, an IHDR claiming a huge size),
    hostile JSON, deeply nested JSON, /explain with hostile options, broken multipart framing. ``good`` is a
    valid PNG the damaged ones start from. Seeded: the same corpus every run."""
    rnd = random.Random(seed)
    ctypes = [
        None,
        "application/json",
        "text/plain",
        "image/png",
        "multipart/form-data",
        "multipart/form-data; boundary=b",
        "application/octet-stream",
        "application/vnd.bentoml+pickle",
        "x/y; charset=\x7f",
        "",
    ]

    def mutate(b: bytes) -> bytes:
        a = bytearray(b)
        op = rnd.randrange(4)
        if op == 0:
            return bytes(a[: rnd.randrange(len(a))])
        if op == 1:
            for _ in range(rnd.randint(1, 20)):
                a[rnd.randrange(len(a))] = rnd.randrange(256)
            return bytes(a)
        if op == 2:  # a PNG whose IHDR claims a huge size (with a valid CRC)
            w, h = rnd.choice([(100_000, 100_000), (1, 10**7), (0, 0), (2**31 - 1, 1)])
            ihdr = b"IHDR" + w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes(a[24:29])
            return bytes(a[:12]) + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + bytes(a[33:])
        return rnd.randbytes(rnd.randint(0, 300))

    out = []
    for i in range(n):
        kind = i % 8
        path = rnd.choice(["/predict", "/predict", "/explain", "/admin/reload"])
        field = "image" if path == "/explain" else "images"
        if kind == 0:  # random body, random content type
            headers = {} if (ct := rnd.choice(ctypes)) is None else {"content-type": ct}
            out.append({"path": path, "content": rnd.randbytes(rnd.randint(0, 400)), "headers": headers})
        elif kind in (1, 2, 3):  # multipart with a damaged image
            ptype = rnd.choice(["image/png", "image/jpeg", "application/octet-stream", "text/plain", "image/*"])
            out.append(
                {
                    "path": path,
                    "files": [(field, (rnd.choice(["a.png", "x" * 300, "", "../../etc/passwd"]), mutate(good), ptype))],
                }
            )
        elif kind == 4:  # random JSON documents
            doc = rnd.choice(
                [
                    {field: rnd.randint(-5, 5)},
                    {field: ["aGk="]},
                    [],
                    "x",
                    None,
                    {field: {"a": 1}},
                    {field: "http://127.0.0.1:1/a.png"},
                    {"attack_eps": 1e308},
                    json.loads("[" * 50 + "]" * 50),
                ]
            )
            out.append({"path": path, "content": json.dumps(doc).encode(), "headers": {"content-type": "application/json"}})
        elif kind == 5:  # deeply nested / broken JSON
            depth = rnd.choice([10, 1000, 100_000])
            out.append(
                {"path": path, "content": b"[" * depth + rnd.randbytes(3), "headers": {"content-type": "application/json"}}
            )
        elif kind == 6:  # explain with hostile options on a damaged image
            opts = {
                rnd.choice(["attack_eps", "map_size", "baseline", "attack_steps", "zzz"]): rnd.choice(
                    ["-1", "nan", "inf", "1e9", "", "[]", "{}", "\x00"]
                )
            }
            out.append({"path": "/explain", "files": [("image", ("a.png", mutate(good), "image/png"))], "data": opts})
        else:  # broken multipart framing
            boundary = rnd.choice(["b", "x" * 80, ""])
            body = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="a.png"\r\n'.encode() + mutate(good)
            if rnd.random() < 0.5:
                body += f"\r\n--{boundary}--\r\n".encode()
            out.append({"path": path, "content": body, "headers": {"content-type": f"multipart/form-data; boundary={boundary}"}})
    return out
