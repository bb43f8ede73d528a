"""The server's allocator keeps big freed blocks: a new upload body reuses the last one's
pages instead of faulting in fresh ones (measured in fresh interpreters, as page faults)."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import base64, os, resource, sys
import msgspec
from app.allocator import keep_freed_memory

if sys.argv[1] == "tuned":
    assert keep_freed_memory()

class Body(msgspec.Struct):
    image_data: bytes

body = msgspec.json.encode({"image_data": base64.b64encode(os.urandom(12 << 20)).decode()})
for round in range(2):  # the first round warms up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        fresh = bytes(bytearray(body))  # a new body, as the server receives each one
        msgspec.json.decode(fresh, type=Body)
        del fresh
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


def faults_per_body(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True
    )
    return int(result.stdout)


def test_big_bodies_reuse_the_memory_of_the_last_ones() -> None:
    plain, tuned = faults_per_body("plain"), faults_per_body("tuned")
    assert plain > 4000  # 22 MB body + 16 MB image in fresh pages: one fault per 4 KiB
    assert tuned < plain / 20, (plain, tuned)
