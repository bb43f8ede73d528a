"""A real S3 server for the tests: Ceph RGW over a one-monitor, one-OSD, in-memory cluster.

`running_rgw()` starts, in a temporary folder and on free loopback ports, a `ceph-mon`, a
`ceph-osd` keeping its objects in memory (memstore: nothing touches a disk but the logs),
and `radosgw` (beast frontend), creates an S3 user and waits until an S3 request
succeeds; at exit it stops every process and removes the folder. Nothing is read from or
written to /etc/ceph or /var/lib/ceph: every daemon and tool gets `--conf` of its own.
Authentication inside the cluster is off (`auth_*_required = none`, messages checked by
crc only); the S3 user's keys are checked by RGW as on any S3 service.

Measured on the 2-core test machine: ready in about 1 s from a cold start (0.8 to 1.5 s
over 15 starts, three clusters at once included), stopped in 0.2 s, and about 125 MB of
resident memory at start (mon 36 MB, OSD 44 MB, RGW 45 MB; the OSD grows by what is
stored). With the default `paxos propose interval` of 1 s the start took 11 to 14 s:
RGW's first start makes a dozen pool and map changes, each waiting for the monitor's
next proposal; a single monitor has nothing to batch, so it proposes at once here.
Debian 12's Ceph 16 has no `dbstore` backend (RGW without a cluster), hence the monitor
and the OSD.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import NamedTuple

import boto3
import pytest
from botocore.config import Config

__all__ = ["RgwServer", "RgwUnavailable", "rgw_server", "running_rgw"]

BINARIES = ("monmaptool", "ceph-mon", "ceph-osd", "ceph", "radosgw", "radosgw-admin")
# From nothing to an S3 answer, every command included.
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0
REGION = "us-east-1"
USER = "imgjobs"
MEMSTORE_BYTES = 1024 * 1024 * 1024


class RgwServer(NamedTuple):
    """Where the S3 server listens and the keys of its one user."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str


class RgwUnavailable(RuntimeError):
    """The Ceph binaries are missing, or the cluster did not come up."""


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the thread that started it ends (the
    test process's main thread, or the process itself, killed or not)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(root: Path, *, fsid: str, mon_port: int, rgw_port: int) -> str:
    """ceph.conf: everything under `root`, no authentication inside the cluster, one
    copy of every object, in memory."""
    return f"""\
[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_port}]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
ms cluster mode = crc
ms service mode = crc
ms client mode = crc
ms mon cluster mode = crc
ms mon service mode = crc
ms mon client mode = crc
keyring = {root}/keyring
run dir = {root}/run
admin socket = {root}/run/$name.asok
pid file = {root}/run/$name.pid
crash dir = {root}/crash
log file = {root}/log/$name.log
log to stderr = false
err to stderr = false
mon cluster log file = {root}/log/cluster.log
mon data = {root}/mon/$id
osd data = {root}/osd/$id
mgr data = {root}/mgr/$id
mds data = {root}/mds/$id
rgw data = {root}/rgw/$id
osd objectstore = memstore
memstore device bytes = {MEMSTORE_BYTES}
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
# A single monitor has no one to batch updates with: propose at once, not every second.
paxos propose interval = 0.01

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw enable apis = s3, admin
rgw thread pool size = 32
rgw dynamic resharding = false
rgw enable gc threads = false
rgw enable lc threads = false
"""


class _Cluster:
    """The daemons of one test cluster and the commands that talk to it."""

    def __init__(self, root: Path, *, deadline: float) -> None:
        self.root = root
        self.deadline = deadline
        self.conf = root / "ceph.conf"
        self.daemons: list[tuple[str, subprocess.Popen[bytes]]] = []

    def run(self, *args: str) -> str:
        """Run a tool against the cluster (waiting for it if it is still starting)."""
        command = [args[0], "--conf", str(self.conf), *args[1:]]
        timeout = max(self.deadline - time.monotonic(), 1.0)
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise self.failure(f"`{' '.join(args)}` did not finish in time") from None
        if done.returncode != 0:
            raise self.failure(
                f"`{' '.join(args)}` exited with {done.returncode}: {done.stderr.strip()[-2000:]}"
            )
        return done.stdout

    def start(self, name: str, *args: str) -> None:
        """Start a daemon in the foreground, to be stopped with the others (or when this
        process dies, even by SIGKILL: a killed test run leaves no daemon behind)."""
        with open(self.root / "log" / f"{name}.out", "wb") as out:
            process = subprocess.Popen(
                [args[0], "-f", "--conf", str(self.conf), *args[1:]],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        self.daemons.append((name, process))

    def check_alive(self) -> None:
        for name, process in self.daemons:
            if process.poll() is not None:
                raise self.failure(f"{name} exited with {process.returncode}")

    def failure(self, message: str) -> RgwUnavailable:
        """`message` with the tail of every log, to see why the cluster did not start."""
        tails = []
        for log in sorted((self.root / "log").glob("*")):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            if lines:
                tails.append(f"--- {log.name} (last lines)\n" + "\n".join(lines))
        return RgwUnavailable("\n".join([f"Ceph RGW did not start: {message}", *tails]))

    def stop(self) -> None:
        """Stop the daemons one by one, the last started first: SIGTERM, then SIGKILL.

        In turn, because an OSD stopping tells the monitor first (0.8 s), and waits 5 s
        for an answer if the monitor is already gone.
        """
        while self.daemons:
            _name, process = self.daemons.pop()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_s3(cluster: _Cluster, server: RgwServer) -> None:
    """Until the user can list its buckets (RGW answers once its pools exist)."""
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=server.region,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=Config(
            connect_timeout=2, read_timeout=5, retries={"max_attempts": 1, "mode": "standard"}
        ),
    )
    error: Exception | None = None
    while time.monotonic() < cluster.deadline:
        cluster.check_alive()
        try:
            client.list_buckets()
        except Exception as exc:  # not up yet: connection refused, 503, ...
            error = exc
            time.sleep(0.2)
        else:
            client.close()
            return
    client.close()
    raise cluster.failure(f"no S3 answer within {START_TIMEOUT_S:.0f} s (last error: {error!r})")


@contextmanager
def running_rgw() -> Iterator[RgwServer]:
    """A fresh Ceph RGW on a loopback port, for the block; stopped and removed after.

    Enter it in a thread that outlives the block (the main thread, as a pytest fixture
    does): the daemons are told to stop when the thread that started them ends.
    """
    if missing := missing_binaries():
        raise RgwUnavailable(
            f"the Ceph binaries {', '.join(missing)} are missing: run `make system-test` "
            "(it installs radosgw, ceph-mon and ceph-osd)"
        )
    with ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="imgjobs-rgw-"))
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        for folder in ("run", "log", "crash", "mon/a", "osd/0", "rgw/rgw"):
            (root / folder).mkdir(parents=True)
        mon_port, rgw_port = _free_port(), _free_port()
        fsid = str(uuid.uuid4())
        cluster = _Cluster(root, deadline=time.monotonic() + START_TIMEOUT_S)
        cluster.conf.write_text(_config(root, fsid=fsid, mon_port=mon_port, rgw_port=rgw_port))
        stack.callback(cluster.stop)

        monmap = str(root / "monmap")
        cluster.run(
            "monmaptool", "--create", "--fsid", fsid, "--addv", "a",
            f"[v2:127.0.0.1:{mon_port}]", monmap,
        )  # fmt: skip
        cluster.run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap)
        cluster.start("mon.a", "ceph-mon", "-i", "a")

        osd_uuid = str(uuid.uuid4())
        osd_id = cluster.run("ceph", "--connect-timeout", "30", "osd", "new", osd_uuid).strip()
        cluster.run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        cluster.start(f"osd.{osd_id}", "ceph-osd", "-i", osd_id)

        server = RgwServer(
            endpoint=f"http://127.0.0.1:{rgw_port}",
            access_key=uuid.uuid4().hex[:20].upper(),
            secret_key=uuid.uuid4().hex + uuid.uuid4().hex[:8],
            region=REGION,
        )
        cluster.start("client.rgw", "radosgw", "-n", "client.rgw")
        cluster.run(
            "radosgw-admin", "user", "create", f"--uid={USER}", f"--display-name={USER}",
            f"--access-key={server.access_key}", f"--secret={server.secret_key}",
        )  # fmt: skip
        _wait_for_s3(cluster, server)
        yield server


@pytest.fixture(scope="session")
def rgw_server() -> Iterator[RgwServer]:
    """One Ceph RGW for the whole test session (about 1 s to start, 0.2 s to stop)."""
    if missing := missing_binaries():
        pytest.fail(
            f"the Ceph binaries {', '.join(missing)} are missing: run `make system-test`",
            pytrace=False,
        )
    with running_rgw() as server:
        yield server


if __name__ == "__main__":  # a manual check: start, report the time and memory, stop
    started = time.monotonic()
    with running_rgw() as found:
        print(f"{found.endpoint} ready in {time.monotonic() - started:.1f} s; RSS in KiB:")
        subprocess.run(["ps", "-o", "rss=,comm=", "--ppid", str(os.getpid())], check=False)
