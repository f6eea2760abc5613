"""Scale benchmark: many tunnels on one gateway, Outpost's concentrator vs strongSwan, one run.

Issue 6 "What the concentrator must hold". ``outpost-loadtest`` runs in a
``tester`` namespace (every simulated road warrior on its own source
address: the whole range is made local with one ``ip route add local``),
the gateway in ``gw``, a LAN host answering pings in ``lan``::

    [tester] 192.0.2.2 + local SOURCES --- br0 --- 192.0.2.1 [gw] --- 10.99.0.10 [lan]
             outpost-loadtest, 2 workers          concentrator | charon   routes the pool via gw

Steps (each reports tunnels held, handshakes/s, time to establish p95,
packets answered, and for Outpost memory per tunnel and CPU from its
control socket):

1. ``outpost``: 1,000 tunnels (pool 10.99.100.0/22) with light traffic;
2. ``strongswan``: the same against charon 5.9.8 + kernel-libipsec as the
   gateway (pool 10.99.100.0/22, PSK for any ``user-N@loadtest``), when
   installed; its memory is charon's resident growth, read from /proc;
3. ``outpost-ecdsa``: the 1,000 again as certificate users: the tester holds
   a test CA (ECDSA P-256) and issues each client its own certificate just
   before its handshake; the concentrator signs with a certificate from the
   same CA and admits whomever the CA vouches for (``[ca] authorize = "any"``,
   no ``[[users]]``), as a real certificate deployment runs;
4. ``strongswan-ecdsa``: the same against charon (``auth = pubkey`` both
   ways, ``remote { id = %any; cacerts = ca.pem }``);
5. ``outpost-10k``: 10,000 tunnels (pool 10.99.64.0/18), unless ``--skip-10k``;
   if it does not get there, the report's failures name the limit.

PSK and ECDSA figures are printed side by side, with the ratios of ours over
strongSwan's for each. ECDSA costs both sides of every handshake a signature
and a verification (and the gateway a chain validation), so its rate is the
one that says how fast a certificate deployment can bring users back.

Why the same tester, namespaces and minutes for both gateways: on a small
shared VM absolute figures move by tens of percent; the ratio of neighbours
in time is what means something (as bench/tunnel.py argues). The tester
shares the two cores with the gateway, so handshakes/s is a floor for
either gateway, and the same floor for both.

Run as root: ``.venv/bin/python bench/scale.py [--clients 1000] [--skip-10k]``.
Results: a table on stdout and ``bench/results/scale.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Final
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

from tests.helpers import strongswan  # noqa: E402
from tests.helpers.concentrator_lab import (  # noqa: E402
    GATEWAY_ID,
    GATEWAY_IP,
    GATEWAY_LAN_IP,
    LAN,
    LAN_HOST_IP,
    LAPTOP_IPS,
    ConcentratorLab,
    ConcentratorProcess,
    build_lab,
    concentrator_document,
    write_document,
)
from tests.helpers.netns import NetnsLab  # noqa: E402
from tests.helpers.pki import make_ca, make_leaf  # noqa: E402
from tests.helpers.strongswan import StrongSwan, SwanConnection  # noqa: E402

RESULTS: Final = ROOT / "bench" / "results" / "scale.json"
LOADTEST: Final = str(Path(sys.executable).parent / "outpost-loadtest")
PSK: Final = "scale-bench-shared-psk-0123456789"
POOL_1K: Final = "10.99.100.0/22"
POOL_10K: Final = "10.99.64.0/18"
SOURCES_1K: Final = "198.51.100.0/22"
SOURCES_10K: Final = "100.64.0.0/18"
PROFILE: Final = f"""\
[gateway]
address = "{GATEWAY_IP}"
identity = "{GATEWAY_ID}"
[auth]
id = "user-{{n}}@loadtest"
psk = "{PSK}"
[ike]
proposals = ["aes256gcm16-prfsha256-x25519"]
esp_proposals = ["aes256gcm16"]
"""


ECDSA_PROFILE: Final = f"""\
[gateway]
address = "{GATEWAY_IP}"
identity = "{GATEWAY_ID}"
[auth]
id = "user-{{n}}@loadtest"
certificate_ca = "ca.pem"
certificate_ca_key = "ca.key"
ca = "ca.pem"
[ike]
proposals = ["aes256gcm16-prfsha256-x25519"]
esp_proposals = ["aes256gcm16"]
"""
RUNS: Final = ("outpost", "strongswan", "outpost-ecdsa", "strongswan-ecdsa", "big")


def write_pki(directory: Path) -> None:
    """The test CA (ECDSA P-256; the tester holds its key) and the gateway's certificate.

    Both gateways sign with ``gateway.pem`` and trust ``ca.pem`` for the clients;
    the tester trusts ``ca.pem`` for the gateway.
    """
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    ca = make_ca("Outpost scale-bench CA", not_before=now - day, not_after=now + 30 * day)
    gateway = make_leaf(
        ca, GATEWAY_ID, dns_names=[GATEWAY_ID], not_before=now - day, not_after=now + 30 * day
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca.write_pem(directory / "ca.pem", directory / "ca.key")
    gateway.write_pem(directory / "gateway.pem", directory / "gateway.key")
    for key in ("ca.key", "gateway.key"):
        (directory / key).chmod(0o600)


def gateway_swanctl(conn: SwanConnection) -> str:
    """swanctl.conf for charon as the gateway of every ``user-N@loadtest`` (one PSK, a pool)."""
    del conn
    return f"""\
connections {{
    rw {{
        version = 2
        local_addrs = {GATEWAY_IP}
        pools = rw_pool
        proposals = aes256gcm16-prfsha256-x25519
        encap = yes
        unique = never
        local {{
            auth = psk
            id = {GATEWAY_ID}
        }}
        remote {{
            auth = psk
            id = %any
        }}
        children {{
            office {{
                local_ts = {LAN}
                esp_proposals = aes256gcm16
                mode = tunnel
            }}
        }}
    }}
}}
pools {{
    rw_pool {{
        addrs = {POOL_1K}
    }}
}}
secrets {{
    ike-rw {{
        id = {GATEWAY_ID}
        secret = "{PSK}"
    }}
}}
"""


def gateway_swanctl_ecdsa(conn: SwanConnection) -> str:
    """swanctl.conf for charon as the gateway of certificate users: pubkey both ways, a pool.

    ``remote { id = %any; cacerts }``: anyone the CA vouches for, under the
    identity their certificate names, as our ``[ca] authorize = "any"``.
    """
    del conn
    return f"""\
connections {{
    rw {{
        version = 2
        local_addrs = {GATEWAY_IP}
        pools = rw_pool
        proposals = aes256gcm16-prfsha256-x25519
        encap = yes
        unique = never
        local {{
            auth = pubkey
            id = {GATEWAY_ID}
            certs = gateway.pem
        }}
        remote {{
            auth = pubkey
            id = %any
            cacerts = ca.pem
        }}
        children {{
            office {{
                local_ts = {LAN}
                esp_proposals = aes256gcm16
                mode = tunnel
            }}
        }}
    }}
}}
pools {{
    rw_pool {{
        addrs = {POOL_1K}
    }}
}}
"""


_HELPER_STRONGSWAN_CONF: Final = strongswan.strongswan_conf


def gateway_strongswan_conf(workdir: Path, *, fragment_size: int | None = None) -> str:
    """The helper's strongswan.conf, tuned for a gateway under load: quiet log, more threads."""
    text = _HELPER_STRONGSWAN_CONF(workdir, fragment_size=fragment_size)
    text = text.replace("threads = 16", "threads = 32")
    text = text.replace("retransmit_tries = 2", "retransmit_tries = 5")
    # One log line per IKE state change of 1,000 SAs costs real CPU: keep errors only.
    for key in ("ike = 2", "cfg = 2", "enc = 1", "net = 1"):
        text = text.replace(key, key.split("=")[0] + "= 0")
    return text.replace("default = 1\n", "default = 0\n", 1)


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def charon_pid(swan: StrongSwan) -> int | None:
    """charon's pid: the charon process below the ``unshare``/``sh`` chain of the helper."""
    assert swan.process is not None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not os.readlink(entry / "exe").endswith("/charon"):
                continue
            pid = int(entry.name)
            parent = pid
            while parent > 1:
                if parent == swan.process.pid:
                    return pid
                status = (Path("/proc") / str(parent) / "status").read_text()
                parent = int(status.split("PPid:")[1].split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return None


class Bench:
    def __init__(self, netns: NetnsLab, workdir: Path, processes: int) -> None:
        self.workdir = workdir
        self.processes = processes
        self.lab: ConcentratorLab = build_lab(netns, laptops=1)
        self.tester = self.lab.laptops[0]
        for sources in (SOURCES_1K, SOURCES_10K):
            self.tester.ip("route", "add", "local", sources, "dev", "lo")
            self.lab.gw.ip("route", "add", sources, "via", LAPTOP_IPS[0])
        for pool in (POOL_1K, POOL_10K):
            self.lab.lan.ip("route", "add", pool, "via", GATEWAY_LAN_IP)
        self.profile = workdir / "loadtest.toml"
        self.profile.write_text(PROFILE)
        self.profile.chmod(0o600)
        self.pki = workdir / "pki"
        write_pki(self.pki)
        self.ecdsa_profile = self.pki / "loadtest.toml"
        self.ecdsa_profile.write_text(ECDSA_PROFILE)

    def loadtest(
        self,
        name: str,
        clients: int,
        rate: float,
        sources: str,
        socket: Path | None,
        hold: float,
        *,
        ecdsa: bool = False,
    ) -> dict[str, Any]:
        report = self.workdir / f"{name}.json"
        profile = self.ecdsa_profile if ecdsa else self.profile
        argv = [
            LOADTEST,
            *("--profile", str(profile), "--gateway", GATEWAY_IP),
            *("--clients", str(clients), "--rate", str(rate), "--duration", str(hold)),
            *("--traffic", "0.2", "--target", LAN_HOST_IP, "--source-addresses", sources),
            *("--processes", str(self.processes), "--json", str(report)),
            *("--timeout", "60", "--max-in-flight", "400"),
        ]
        if socket is not None:
            argv += ["--concentrator-socket", str(socket)]
        print(f"--- {name}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
        started = time.monotonic()
        process = self.tester.popen(argv, stdout=subprocess.PIPE, text=True)
        stdout, _ = process.communicate(timeout=3600)
        print(stdout, file=sys.stderr, flush=True)
        if not report.exists():
            return {"error": f"outpost-loadtest exited {process.returncode} with no report"}
        data: dict[str, Any] = json.loads(report.read_text())
        data["wall_s"] = round(time.monotonic() - started, 1)
        return data

    def outpost(
        self,
        name: str,
        clients: int,
        rate: float,
        pool: str,
        sources: str,
        hold: float,
        *,
        ecdsa: bool = False,
    ) -> dict[str, Any]:
        workdir = self.workdir / name
        users = [] if ecdsa else [{"id": "user-{n}@loadtest", "psk": PSK, "n_max": 99999}]
        document = concentrator_document(workdir, users, dpd_interval=60, dpd_timeout=300)
        if ecdsa:
            document["server"] |= {
                "certificate": str(self.pki / "gateway.pem"),
                "private_key": str(self.pki / "gateway.key"),
            }
            document["ca"] = {"certificate": str(self.pki / "ca.pem"), "authorize": "any"}
        document["pool"]["ipv4"] = pool
        document["ike"] = {
            "proposals": ["aes256gcm16-prfsha256-x25519"],
            "esp_proposals": ["aes256gcm16"],
        }
        document["cookies"] = {"threshold": 1000}
        config = write_document(workdir / "concentrator.toml", document)
        concentrator = ConcentratorProcess(
            self.lab.gw, config, log_path=workdir / "concentrator.log"
        )
        concentrator.start()
        try:
            result = self.loadtest(
                name, clients, rate, sources, Path(document["control"]["socket"]), hold, ecdsa=ecdsa
            )
            try:
                result["gateway_status_after"] = concentrator.status()
            except subprocess.SubprocessError as error:  # busy deleting thousands of tunnels
                result["gateway_status_after"] = {"error": str(error).splitlines()[-1]}
        finally:
            concentrator.stop(timeout=120)
        return result

    def strongswan(
        self, name: str, clients: int, rate: float, hold: float, *, ecdsa: bool = False
    ) -> dict[str, Any]:
        workdir = self.workdir / name
        workdir.mkdir()
        self.lab.gw.sysctl({"net.ipv4.ip_forward": 1})
        swan = StrongSwan(self.lab.gw, workdir)
        connection = SwanConnection(GATEWAY_IP, GATEWAY_ID, "%any", PSK)
        files = {}
        if ecdsa:
            files = {
                "x509ca/ca.pem": (self.pki / "ca.pem").read_bytes(),
                "x509/gateway.pem": (self.pki / "gateway.pem").read_bytes(),
                "private/gateway.pem": (self.pki / "gateway.key").read_bytes(),
            }
        swanctl = gateway_swanctl_ecdsa if ecdsa else gateway_swanctl
        with (
            mock.patch.object(strongswan, "swanctl_conf", swanctl),
            mock.patch.object(strongswan, "strongswan_conf", gateway_strongswan_conf),
        ):
            swan.start(connection, files=files)
        try:
            pid = charon_pid(swan)
            before = rss_of(pid) if pid else None
            cpu_before = _cpu(pid) if pid else None
            started = time.monotonic()
            # The tester reads no control socket here: sample charon during the hold.
            result = self._loadtest_sampling(name, clients, rate, hold, pid, ecdsa=ecdsa)
            if pid and before is not None and result.get("established"):
                peak = result.pop("_charon_rss_peak", before)
                result["charon_rss_per_tunnel_bytes"] = round(
                    (peak - before) / result["established"]
                )
                cpu_after = _cpu(pid)
                if cpu_before is not None and cpu_after is not None:
                    result["charon_cpu_percent"] = round(
                        100 * (cpu_after - cpu_before) / (time.monotonic() - started), 1
                    )
        finally:
            swan.stop()
            self.lab.gw.sysctl({"net.ipv4.ip_forward": 0})
        return result

    def _loadtest_sampling(
        self, name: str, clients: int, rate: float, hold: float, pid: int | None, *, ecdsa: bool
    ) -> dict[str, Any]:
        peak = [rss_of(pid) if pid else 0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.5):
                if pid:
                    try:
                        peak[0] = max(peak[0], rss_of(pid))
                    except OSError:
                        return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = self.loadtest(name, clients, rate, SOURCES_1K, None, hold, ecdsa=ecdsa)
        finally:
            done.set()
            sampler.join()
        result["_charon_rss_peak"] = peak[0]
        return result


def _cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(name: str, data: dict[str, Any]) -> dict[str, Any]:
    if "error" in data:
        return {"run": name, "error": data["error"]}
    per_tunnel = data.get("concentrator_rss_per_tunnel_bytes") or data.get(
        "charon_rss_per_tunnel_bytes"
    )
    concentrator = data.get("concentrator") or {}
    return {
        "run": name,
        "clients": data["clients"],
        "held": data["established"] - data["lost_tunnels"],
        "failed": data["failed"],
        "handshakes_per_s": data["handshakes_per_s"],
        "establish_p95_ms": data["establish_ms"]["p95"],
        "answered": f"{data['packets_received']}/{data['packets_sent']}",
        "rss_per_tunnel_kib": None if per_tunnel is None else round(per_tunnel / 1024, 1),
        "cpu_percent": concentrator.get("cpu_percent", data.get("charon_cpu_percent")),
        "issue_ms": (data.get("certificates") or {}).get("mean_issue_ms"),
        "failures": data["failures"],
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = (
        ("run", 17),
        ("held", 6),
        ("failed", 6),
        ("handshakes_per_s", 17),
        ("establish_p95_ms", 17),
        ("answered", 13),
        ("rss_per_tunnel_kib", 19),
        ("cpu_percent", 12),
    )
    print("  ".join(name.ljust(width) for name, width in columns))
    for row in rows:
        if "error" in row:
            print(f"{row['run']:<17}  {row['error']}")
            continue
        print("  ".join(str(row.get(name)).ljust(width) for name, width in columns))
        if row["failures"]:
            print(f"{'':17}  failures: {row['failures']}")


COMPARED: Final = ("handshakes_per_s", "establish_p95_ms", "rss_per_tunnel_kib")


def print_side_by_side(by_run: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """PSK and ECDSA, ours and strongSwan's, one line per figure; the ratios ours/theirs."""
    pairs = {"psk": ("outpost", "strongswan"), "ecdsa": ("outpost-ecdsa", "strongswan-ecdsa")}
    ratios: dict[str, dict[str, float | None]] = {}
    header = f"{'':20}" + "".join(
        f"{auth + ' ' + side:>18}" for auth in pairs for side in ("outpost", "strongswan", "ratio")
    )
    lines = []
    for key in COMPARED:
        line = f"{key:20}"
        for auth, (ours, theirs) in pairs.items():
            a, b = by_run.get(ours, {}), by_run.get(theirs, {})
            value = ratio(a, b, key)
            ratios.setdefault(auth, {})[key] = value
            line += "".join(f"{x!s:>18}" for x in (a.get(key), b.get(key), value))
        lines.append(line)
    print(header)
    print("\n".join(lines))
    return ratios


def ratio(ours: dict[str, Any], theirs: dict[str, Any], key: str) -> float | None:
    a, b = ours.get(key), theirs.get(key)
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return round(a / b, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="handshakes/s asked")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds held with traffic")
    parser.add_argument("--big", type=int, default=10_000, help="clients of the big run")
    parser.add_argument("--skip-10k", action="store_true", help="no big run")
    parser.add_argument(
        "--runs", nargs="+", choices=RUNS, default=RUNS, help="which runs (default all)"
    )
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/scale.py needs root (network namespaces)", file=sys.stderr)
        return 2
    have_swan = shutil.which("swanctl") is not None and Path(strongswan.CHARON).exists()
    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="outpost-scale-") as tmp, NetnsLab() as netns:
        bench = Bench(netns, Path(tmp), args.processes)
        for run in args.runs:
            if run == "big":
                continue
            ecdsa = run.endswith("-ecdsa")
            if run.startswith("outpost"):
                raw[run] = bench.outpost(
                    run, args.clients, args.rate, POOL_1K, SOURCES_1K, args.hold, ecdsa=ecdsa
                )
            elif have_swan:
                raw[run] = bench.strongswan(run, args.clients, args.rate, args.hold, ecdsa=ecdsa)
            else:
                print(f"strongSwan not installed: no {run} (make debs)", file=sys.stderr)
                continue
            rows.append(summary(run, raw[run]))
        if not args.skip_10k and "big" in args.runs:
            raw["outpost-big"] = bench.outpost(
                "outpost-big", args.big, args.rate, POOL_10K, SOURCES_10K, args.hold
            )
            rows.append(summary(f"outpost-{args.big // 1000}k", raw["outpost-big"]))
    print_table(rows)
    # Neighbours in time (PSK pair, then ECDSA pair): the ratios mean something.
    ratios = print_side_by_side({row["run"]: row for row in rows if "error" not in row})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "benchmark": "scale",
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
                "summary": rows,
                "ratios_outpost_over_strongswan": ratios,
                "raw": raw,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
