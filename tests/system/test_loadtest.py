"""``outpost-loadtest`` against the concentrator as a process in namespaces (issue 6, CI size).

The concentrator lab of tests/helpers/concentrator_lab.py, with one laptop
as the tester. Every simulated client binds its own source address from
198.51.100.0/22, made local to the tester with one ``ip route add local``
(no thousand ``ip addr add``), and routed to it from ``gw``::

    [tester] 192.0.2.2 + local 198.51.100.0/22 --- br0 --- 192.0.2.1 [gw] --- [lan] 10.99.0.10
             outpost-loadtest (2 workers)                  outpost-concentrator  pings answered
                                                           pool 10.99.100.0/22

Checked: 100 tunnels all come up and every probe's reply comes back
through its own tunnel (``packets_received == packets_sent`` with no reply
error: a reply to the wrong inner address or from the wrong source would be
an error, not a success); the JSON report has its keys; the concentrator's
memory per tunnel is read through its control socket. Then a flood of
IKE_SA_INIT from many source addresses, never followed up, is answered
with COOKIE while a few established tunnels keep passing every probe.

Then the concentrator is restarted as a real certificate deployment would
run it (``[server] certificate`` signed by a test CA, ``[ca] authorize =
"any"``, no ``[[users]]``): certificate users, each with its own ECDSA
certificate issued by the tester from that CA, all come up and pass
traffic. Last, with ``[lifetimes] child`` a few seconds, every tunnel's
Child SA is rekeyed (by the concentrator, and once by each client) while
probes flow: rekeys are counted, no tunnel is lost, no probe is lost.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from tests.helpers.concentrator_config import LOAD_PSK, Document
from tests.helpers.concentrator_lab import (
    GATEWAY_ID,
    GATEWAY_IP,
    GATEWAY_LAN_IP,
    LAN_HOST_IP,
    LAPTOP_IPS,
    ConcentratorLab,
    ConcentratorProcess,
    build_lab,
    concentrator_document,
    write_document,
)
from tests.helpers.netns import NetnsLab
from tests.helpers.pki import Issued, make_ca, make_leaf

pytestmark = [pytest.mark.privileged, pytest.mark.needs_tool("ping")]

LOADTEST_BIN: Final = str(Path(sys.executable).parent / "outpost-loadtest")
SOURCES: Final = "198.51.100.0/22"
POOL: Final = "10.99.100.0/22"
COOKIE_THRESHOLD: Final = 20
REPORT_KEYS: Final = {
    "clients",
    "established",
    "failed",
    "handshakes_per_s",
    "establish_ms",
    "packets_sent",
    "packets_received",
    "concentrator_rss_per_tunnel_bytes",
    "failures",
}


@dataclass
class Env:
    lab: ConcentratorLab
    concentrator: ConcentratorProcess
    workdir: Path
    profile: Path
    socket: Path

    def restart(self, name: str, document: Document) -> None:
        """Stop the concentrator (cleanly) and start it again with ``document``.

        The control socket answering first means the service is past its
        start and has its SIGTERM handler (a SIGTERM during start kills it).
        """
        self.concentrator.status()
        status = self.concentrator.stop()
        assert status == 0, self.concentrator.log_text()[-4000:]
        config = write_document(self.workdir / name / "concentrator.toml", document)
        self.concentrator = ConcentratorProcess(
            self.lab.gw, config, log_path=self.workdir / name / "concentrator.log"
        )
        self.concentrator.start()
        self.socket = Path(document["control"]["socket"])


def psk_document(workdir: Path) -> Document:
    document = concentrator_document(
        workdir, [{"id": "user-{n}@loadtest", "psk": LOAD_PSK, "n_max": 9999}]
    )
    document["pool"]["ipv4"] = POOL
    document["cookies"] = {"threshold": COOKIE_THRESHOLD}
    return document


def profile_text() -> str:
    return f"""\
[gateway]
address = "{GATEWAY_IP}"
identity = "{GATEWAY_ID}"
[auth]
id = "user-{{n}}@loadtest"
psk = "{LOAD_PSK}"
[ike]
proposals = ["aes256gcm16-prfsha256-x25519"]
esp_proposals = ["aes256gcm16"]
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("loadtest")
    with NetnsLab() as netns_lab:
        lab = build_lab(netns_lab, laptops=1)
        tester = lab.laptops[0]
        tester.ip("route", "add", "local", SOURCES, "dev", "lo")
        lab.gw.ip("route", "add", SOURCES, "via", LAPTOP_IPS[0])
        lab.lan.ip("route", "add", POOL, "via", GATEWAY_LAN_IP)
        document = psk_document(workdir)
        config = write_document(workdir / "concentrator.toml", document)
        concentrator = ConcentratorProcess(lab.gw, config, log_path=workdir / "concentrator.log")
        concentrator.start()
        profile = workdir / "loadtest.toml"
        profile.write_text(profile_text())
        profile.chmod(0o600)
        env = Env(lab, concentrator, workdir, profile, Path(document["control"]["socket"]))
        try:
            yield env
        finally:
            # The concentrator may have been restarted by a test: stop the current one.
            status = env.concentrator.stop()
            assert status == 0, env.concentrator.log_text()[-4000:]


def loadtest(
    env: Env, name: str, *args: str, profile: Path | None = None, timeout: float = 90
) -> tuple[dict[str, Any], str]:
    """Run ``outpost-loadtest`` in the tester namespace; its JSON report and its output."""
    report = env.workdir / f"{name}.json"
    result = env.lab.laptops[0].run(
        [
            LOADTEST_BIN,
            *("--profile", str(profile or env.profile), "--gateway", GATEWAY_IP),
            *("--target", LAN_HOST_IP, "--source-addresses", SOURCES),
            *("--processes", "2", "--json", str(report)),
            *("--concentrator-socket", str(env.socket)),
            *args,
        ],
        check=False,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    dataplane = env.concentrator.status()["dataplane"]
    output += f"\nconcentrator data plane: {json.dumps(dataplane)}"
    assert report.exists(), output + env.concentrator.log_text()[-3000:]
    data: dict[str, Any] = json.loads(report.read_text())
    return data, output


def test_hundred_tunnels_all_up_and_passing_traffic(env: Env) -> None:
    report, output = loadtest(
        env,
        "hundred",
        *("--clients", "100", "--rate", "50", "--duration", "5", "--traffic", "2"),
    )
    assert report.keys() >= REPORT_KEYS, output
    assert report["clients"] == 100
    assert report["established"] == 100, output
    assert report["failed"] == 0
    assert report["failures"] == {}
    # Each client pinged for ~5 s at 2/s: hundreds of probes, every reply back, none astray.
    assert report["packets_sent"] >= 100 * 2 * 4, output
    assert report["reply_errors"] == {}, output
    assert report["lost_tunnels"] == 0
    assert report["handshakes_per_s"] > 0
    percentiles = report["establish_ms"]
    assert 0 < percentiles["p50"] <= percentiles["p95"] <= percentiles["p99"]
    gateway = report["concentrator"]
    assert gateway is not None, output
    assert gateway["tunnels_after"] - gateway["tunnels_before"] == 100
    assert report["concentrator_rss_per_tunnel_bytes"] is not None
    assert "established   100" in output
    # The run deleted its tunnels: the concentrator holds none of them afterwards.
    status = env.concentrator.status()
    assert status["tunnels"] == gateway["tunnels_before"]
    assert_every_probe_answered(report, status, output)


def assert_every_probe_answered(
    report: dict[str, Any], status: dict[str, Any], output: str
) -> None:
    """``packets_received == packets_sent``: every probe came back through its own tunnel.

    The concentrator installs a Child SA before its IKE_AUTH answer leaves, so
    even a client's very first ESP packet finds its SA (no ``unknown_spi``).
    """
    assert report["packets_sent"] > 0, output
    assert report["packets_received"] == report["packets_sent"], (
        output + f"\ndrops: {status['dataplane']}"
    )


def test_ike_sa_init_flood_gets_cookies_while_tunnels_keep_passing_traffic(env: Env) -> None:
    report, output = loadtest(
        env,
        "flood",
        *("--clients", "5", "--rate", "20", "--duration", "6", "--traffic", "5"),
        *("--flood", "300", "--first", "500"),
    )
    assert report["established"] == 5, output
    flood = report["flood"]
    assert flood["sent"] >= 1000, output
    # Past COOKIE_THRESHOLD half-open SAs, the concentrator answers with COOKIE only.
    assert flood["cookies"] > flood["sent"] // 2, output
    assert flood["answered"] <= COOKIE_THRESHOLD * 4, output
    assert report["packets_sent"] >= 5 * 5 * 5
    assert report["reply_errors"] == {}
    assert_every_probe_answered(report, env.concentrator.status(), output)


# --- certificate users, then rekeys ---------------------------------------------------


def write_pki(directory: Path) -> Issued:
    """A test CA (its key is the tester's) and the gateway's certificate from it."""
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    ca = make_ca("Outpost load-test CA", not_before=now - day, not_after=now + 30 * day)
    gateway = make_leaf(
        ca, GATEWAY_ID, dns_names=[GATEWAY_ID], not_before=now - day, not_after=now + 30 * day
    )
    ca.write_pem(directory / "ca.pem", directory / "ca.key")
    gateway.write_pem(directory / "gateway.pem", directory / "gateway.key")
    for key in ("ca.key", "gateway.key"):
        (directory / key).chmod(0o600)
    return ca


def certificate_profile_text() -> str:
    return f"""\
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


def test_certificate_users_each_with_an_issued_certificate_all_up_and_passing_traffic(
    env: Env,
) -> None:
    pki = env.workdir / "pki"
    pki.mkdir()
    write_pki(pki)
    document = concentrator_document(env.workdir / "certificates", [])
    document["server"] |= {
        "certificate": str(pki / "gateway.pem"),
        "private_key": str(pki / "gateway.key"),
    }
    document["ca"] = {"certificate": str(pki / "ca.pem"), "authorize": "any"}
    document["pool"]["ipv4"] = POOL
    env.restart("certificates", document)
    profile = pki / "loadtest.toml"
    profile.write_text(certificate_profile_text())
    report, output = loadtest(
        env,
        "certificates",
        *("--clients", "20", "--rate", "20", "--duration", "4", "--traffic", "2"),
        profile=profile,
    )
    assert report["established"] == 20, output + env.concentrator.log_text()[-3000:]
    assert report["failed"] == 0
    assert report["lost_tunnels"] == 0
    certificates = report["certificates"]
    assert certificates["issued"] == 20, output
    assert 0 < certificates["mean_issue_ms"] < 20, output
    assert "certificates  issued 20" in output
    assert report["reply_errors"] == {}, output
    assert report["packets_sent"] >= 20 * 2 * 3, output
    assert_every_probe_answered(report, env.concentrator.status(), output)
    # No [[users]] and no PSK anywhere: each of them came in on its own certificate.
    log = env.concentrator.log_text()
    assert "user-19@loadtest" in log, log[-2000:]


def test_child_sa_rekeys_under_traffic_lose_no_tunnel_and_no_probe(env: Env) -> None:
    document = psk_document(env.workdir / "rekeys")
    document["lifetimes"] = {"child": 6}
    env.restart("rekeys", document)
    report, output = loadtest(
        env,
        "rekeys",
        *("--clients", "40", "--rate", "40", "--duration", "14", "--traffic", "5"),
        *("--rekey", "4", "--first", "1000"),
    )
    assert report["established"] == 40, output
    rekeys = report["rekeys"]
    # Each client asks once (--rekey 4); the concentrator rekeys every ~6 s besides.
    assert rekeys["child"] >= 40 * 2, output
    assert rekeys["failed"] == 0, output
    assert report["lost_tunnels"] == 0, output
    assert report["reply_errors"] == {}, output
    assert_every_probe_answered(report, env.concentrator.status(), output)
