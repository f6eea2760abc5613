"""strongSwan (charon 5.9.8 + swanctl) as a test peer inside a lab namespace.

One :class:`StrongSwan` is one charon in one :class:`~tests.helpers.netns.Host`,
with every file under a test's ``tmp_path``:

- its own mount namespace with ``DIR/run`` bound on ``/run``, because 5.9.8
  compiles in the pid file ``/var/run/charon.pid`` (two charons would clash);
- an explicit plugin list with ``kernel-libipsec`` *before* ``kernel-netlink``
  (the kernel has no XFRM/ESP here; the other order fails with ENOSYS) and no
  ``resolve`` plugin (it would rewrite the host's resolv.conf);
- the vici socket at ``DIR/run/charon.vici``, which :meth:`StrongSwan.swanctl` uses.

:meth:`StrongSwan.sas` parses ``swanctl --list-sas`` into :class:`SwanIkeSa` /
:class:`SwanChildSa`; :meth:`StrongSwan.wait_sas` polls it until a condition
holds (``--rekey`` only queues the job, it does not wait for the exchange).

The charon runs through ``Host.popen``, so the lab's teardown stops it even
when the test fails; :meth:`StrongSwan.stop` stops it earlier.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tests.helpers.netns import Host, NetnsCommandError

CHARON: Final = "/usr/lib/ipsec/charon"
PLUGINS: Final = (
    "random nonce openssl aesni aes gcm chapoly sha1 sha2 hmac kdf pem pkcs1 pkcs8 x509 "
    "pubkey curve25519 gmp constraints revocation attr kernel-libipsec kernel-netlink "
    "socket-default vici"
)
_SWANCTL_SUBDIRS: Final = (
    *("x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl", "pubkey"),
    *("rsa", "ecdsa", "bliss", "pkcs8", "pkcs12", "private", "conf.d"),
)


def strongswan_conf(workdir: Path, *, fragment_size: int | None = None) -> str:
    """strongswan.conf for one charon whose state lives under ``workdir``.

    ``fragment_size``: charon's limit on a sent IKE message's whole IP datagram
    (RFC 7383 fragments above it); None keeps charon's default (1280).
    """
    fragment = f"\n    fragment_size = {fragment_size}" if fragment_size else ""
    return f"""\
charon {{
    load = {PLUGINS}{fragment}
    install_routes = yes
    install_virtual_ip = yes
    # 9 workers block for good here (kernel-libipsec, netlink, vici, receiver...):
    # with threads = 8 nothing is left and vici never answers
    threads = 16
    retransmit_tries = 2
    retransmit_timeout = 1.0
    # a rekeyed Child SA's inbound half (state DELETED in --list-sas) goes 1 s after
    # the rekey, not 5 s (the default); 0 would keep it for good in 5.9.8
    delete_rekeyed_delay = 1
    plugins {{
        vici {{
            socket = unix://{workdir}/run/charon.vici
        }}
        kernel-libipsec {{
            allow_peer_ts = no
        }}
        socket-default {{
            use_ipv6 = no
        }}
    }}
    filelog {{
        test {{
            path = {workdir}/charon.log
            time_format = %T
            append = no
            default = 1
            ike = 2
            cfg = 2
            enc = 1
            net = 1
            flush_line = yes
        }}
    }}
    syslog {{
        daemon {{
            default = -1
        }}
        auth {{
            default = -1
        }}
    }}
}}
swanctl {{
    socket = unix://{workdir}/run/charon.vici
}}
"""


@dataclass(frozen=True)
class SwanConnection:
    """One PSK road-warrior connection ``home``/``rw`` with one Child SA ``office``.

    ``pool`` makes it the gateway (responder with a virtual IP pool);
    ``vips`` makes it the road warrior (initiator asking for an address).
    ``cert`` (a file name under ``swanctl/x509``) switches both rounds to
    ``auth = pubkey``: charon signs with the key found in ``swanctl/private``
    and checks the peer's certificate against ``swanctl/x509ca`` (see the
    ``files`` of :meth:`StrongSwan.start`); ``psk`` is then unused.
    """

    local_addr: str
    local_id: str
    remote_id: str
    psk: str
    ike_proposal: str = "aes256gcm16-prfsha256-x25519"
    esp_proposal: str = "aes256gcm16"
    remote_addr: str | None = None
    pool: str | None = None
    local_ts: str | None = None
    remote_ts: str | None = None
    vips: str | None = None
    encap: bool = True
    name: str = "conn"
    child: str = "office"
    cert: str | None = None
    send_cert: str | None = None  # ifasked (charon's default), always, never


def swanctl_conf(conn: SwanConnection) -> str:
    """swanctl.conf with the connection, its PSK, and the pool if any."""
    lines = [
        "connections {",
        f"    {conn.name} {{",
        "        version = 2",
        f"        local_addrs = {conn.local_addr}",
    ]
    if conn.remote_addr:
        lines.append(f"        remote_addrs = {conn.remote_addr}")
    if conn.pool:
        lines.append("        pools = test_pool")
    if conn.vips:
        lines.append(f"        vips = {conn.vips}")
    auth = "pubkey" if conn.cert else "psk"
    lines += [
        f"        proposals = {conn.ike_proposal}",
        f"        encap = {'yes' if conn.encap else 'no'}",
        *([f"        send_cert = {conn.send_cert}"] if conn.send_cert else []),
        "        local {",
        f"            auth = {auth}",
        f"            id = {conn.local_id}",
        *([f"            certs = {conn.cert}"] if conn.cert else []),
        "        }",
        "        remote {",
        f"            auth = {auth}",
        f"            id = {conn.remote_id}",
        "        }",
        "        children {",
        f"            {conn.child} {{",
    ]
    if conn.local_ts:
        lines.append(f"                local_ts = {conn.local_ts}")
    if conn.remote_ts:
        lines.append(f"                remote_ts = {conn.remote_ts}")
    lines += [
        f"                esp_proposals = {conn.esp_proposal}",
        "                mode = tunnel",
        "                start_action = none",
        "            }",
        "        }",
        "    }",
        "}",
    ]
    if conn.pool:
        lines += ["pools {", "    test_pool {", f"        addrs = {conn.pool}", "    }", "}"]
    if not conn.cert:
        lines += [
            "secrets {",
            "    ike-test {",
            f"        id-a = {conn.local_id}",
            f"        id-b = {conn.remote_id}",
            f'        secret = "{conn.psk}"',
            "    }",
            "}",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class SwanChildSa:
    """One Child SA line block of ``swanctl --list-sas``; SPIs as 8 hex digits."""

    name: str
    uniqueid: int
    state: str  # INSTALLED, REKEYING, REKEYED, DELETING...
    mode: str  # TUNNEL, TUNNEL-in-UDP...
    proposal: str  # ESP:AES_GCM_16-256/CURVE_25519
    spi_in: str = ""
    spi_out: str = ""


@dataclass
class SwanIkeSa:
    """One IKE SA block of ``swanctl --list-sas``; SPIs as 16 hex digits."""

    name: str
    uniqueid: int
    state: str  # ESTABLISHED, REKEYING, DELETING...
    spi_i: str
    spi_r: str
    children: list[SwanChildSa] = field(default_factory=list)


_IKE_LINE: Final = re.compile(
    r"^(\S+): #(\d+), (\w+), IKEv2, ([0-9a-f]{16})_i\*? ([0-9a-f]{16})_r\*?\s*$"
)
_CHILD_LINE: Final = re.compile(r"^\s+(\S+): #(\d+), reqid \d+, (\w+), (\S+), (\S+)\s*$")
_SPI_LINE: Final = re.compile(r"^\s+(in|out)\s+([0-9a-f]{8})\b")


def parse_list_sas(text: str) -> list[SwanIkeSa]:
    """The IKE SAs (with their Child SAs) in ``swanctl --list-sas`` output."""
    sas: list[SwanIkeSa] = []
    for line in text.splitlines():
        if match := _IKE_LINE.match(line):
            name, uniqueid, state, spi_i, spi_r = match.groups()
            sas.append(SwanIkeSa(name, int(uniqueid), state, spi_i, spi_r))
        elif (match := _CHILD_LINE.match(line)) and sas:
            name, uniqueid, state, mode, proposal = match.groups()
            sas[-1].children.append(SwanChildSa(name, int(uniqueid), state, mode, proposal))
        elif (match := _SPI_LINE.match(line)) and sas and sas[-1].children:
            child = sas[-1].children[-1]
            if match.group(1) == "in":
                child.spi_in = match.group(2)
            else:
                child.spi_out = match.group(2)
    return sas


class StrongSwan:
    """One charon inside ``host``, configured and controlled under ``workdir``."""

    def __init__(self, host: Host, workdir: Path) -> None:
        self.host = host
        self.workdir = workdir
        self.run_dir = workdir / "run"
        self.swanctl_dir = workdir / "swanctl"
        self.conf = workdir / "strongswan.conf"
        self.vici = self.run_dir / "charon.vici"
        self.log = workdir / "charon.log"
        self.process: subprocess.Popen[Any] | None = None

    def start(
        self,
        connection: SwanConnection,
        *,
        timeout: float = 10.0,
        files: Mapping[str, bytes] | None = None,
        fragment_size: int | None = None,
    ) -> None:
        """Write the configuration, start charon, wait for vici, load everything.

        ``fragment_size`` sets charon's ``fragment_size`` (``strongswan_conf``).

        ``files`` maps paths under the swanctl directory to their contents, e.g.
        ``{"x509ca/ca.pem": ..., "x509/gw.pem": ..., "private/gw.pem": ...}``;
        ``--load-all`` then loads them.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for sub in _SWANCTL_SUBDIRS:
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        for relative, content in (files or {}).items():
            path = self.swanctl_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        self.conf.write_text(strongswan_conf(self.workdir, fragment_size=fragment_size))
        (self.swanctl_dir / "swanctl.conf").write_text(swanctl_conf(connection))
        stdout = (self.workdir / "charon.stdout").open("w")
        self.process = self.host.popen(
            [
                *("unshare", "--mount", "--propagation", "private"),
                *("env", f"STRONGSWAN_CONF={self.conf}"),
                *("sh", "-c", f"mount --bind '{self.run_dir}' /run && exec {CHARON}"),
            ],
            stdout=stdout,
            stderr=subprocess.STDOUT,
        )
        stdout.close()
        deadline = time.monotonic() + timeout
        while not self.vici.is_socket():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"charon in {self.host.name} did not start:\n{self.logs()}")
            time.sleep(0.05)
        # vici accepts connections a moment after the socket appears
        while True:
            result = self.swanctl("--stats", check=False, timeout=3)
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"vici never answered:\n{result.stderr}\n{self.logs()}")
            time.sleep(0.05)
        self.swanctl("--load-all", "--file", str(self.swanctl_dir / "swanctl.conf"))

    def swanctl(
        self, command: str, *args: str, check: bool = True, timeout: float = 20.0
    ) -> subprocess.CompletedProcess[str]:
        """``swanctl COMMAND --uri VICI ARGS...`` inside the namespace."""
        return self.host.run(
            ["swanctl", command, "--uri", f"unix://{self.vici}", *args],
            check=check,
            timeout=timeout,
            env={"STRONGSWAN_CONF": str(self.conf), "SWANCTL_DIR": str(self.swanctl_dir)},
        )

    def initiate(self, child: str = "office", *, timeout_s: int = 10) -> NetnsCommandError | None:
        """``swanctl --initiate --child``; None on success, the error (with output) otherwise."""
        try:
            self.swanctl(
                "--initiate", "--child", child, "--timeout", str(timeout_s), timeout=timeout_s + 5
            )
        except NetnsCommandError as error:
            return error
        return None

    def list_sas(self) -> str:
        return self.swanctl("--list-sas").stdout

    def sas(self) -> list[SwanIkeSa]:
        """``swanctl --list-sas``, parsed."""
        return parse_list_sas(self.list_sas())

    def wait_sas(
        self,
        condition: Callable[[list[SwanIkeSa]], bool],
        *,
        timeout: float = 5.0,
        what: str = "the SAs expected",
    ) -> list[SwanIkeSa]:
        """Poll ``--list-sas`` until ``condition`` holds on it; raises with the output."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.list_sas()
            sas = parse_list_sas(text)
            if condition(sas):
                return sas
            if time.monotonic() > deadline:
                raise AssertionError(f"strongSwan never showed {what}:\n{text}\n{self.logs()}")
            time.sleep(0.05)

    def rekey(self, *, child: str | None = None, ike: str | None = None) -> None:
        """``swanctl --rekey --child NAME`` or ``--ike NAME``: queued, not waited for."""
        target = ("--child", child) if child else ("--ike", ike or "")
        self.swanctl("--rekey", *target)

    def terminate(self, ike: str, *, timeout_s: int = 5) -> None:
        """``swanctl --terminate --ike NAME``, waiting for the Delete's answer."""
        self.swanctl(
            "--terminate", "--ike", ike, "--timeout", str(timeout_s), timeout=timeout_s + 5
        )

    def logs(self) -> str:
        parts = []
        for name in ("charon.stdout", "charon.log"):
            path = self.workdir / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-6000:]}")
        return "\n".join(parts)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM charon (through its sh/unshare chain, which exec'd into it) and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
