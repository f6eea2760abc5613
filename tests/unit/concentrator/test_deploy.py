"""deploy/: the systemd units keep their security lines, the NAT script renders what it should.

These tests exist so that a careless edit (dropping CapabilityBoundingSet,
widening ReadWritePaths, moving the state directory away from the example
configuration's paths) fails here rather than on an admin's VM.
"""

from __future__ import annotations

import configparser
import importlib.util
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from concentrator.service import SHUTDOWN_WAIT_S

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
UNIT = DEPLOY / "outpost-concentrator.service"
NAT_UNIT = DEPLOY / "outpost-nat.service"
EXAMPLE = DEPLOY / "concentrator.example.toml"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """Every ``Key=value`` of every section, repeated keys kept in order.

    configparser (strict=False) first proves the file is well-formed INI; it
    keeps only the last of repeated keys (ExecReload=, SystemCallFilter=), so
    the values come from a plain line scan.
    """
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text())
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    assert set(unit) == set(parser.sections())
    return unit


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT)["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key, [])
    assert len(values) == 1, f"{key}= should appear once, found {values}"
    return values[0]


def test_runs_as_a_dedicated_user_with_two_capabilities(service: dict[str, list[str]]) -> None:
    assert one(service, "User") == "outpost"
    assert one(service, "Group") == "outpost"
    assert "DynamicUser" not in service
    wanted = {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}
    assert set(one(service, "CapabilityBoundingSet").split()) == wanted
    assert set(one(service, "AmbientCapabilities").split()) == wanted
    assert one(service, "NoNewPrivileges") == "yes"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX AF_NETLINK"),
        ("DevicePolicy", "closed"),
        ("DeviceAllow", "/dev/net/tun rw"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
    ],
)
def test_hardening_line(service: dict[str, list[str]], key: str, value: str) -> None:
    assert one(service, key) == value


def test_system_call_filter_allows_services_and_denies_privileged(
    service: dict[str, list[str]],
) -> None:
    filters = service["SystemCallFilter"]
    assert "@system-service" in filters
    assert any(f.startswith("~") and "@privileged" in f[1:].split() for f in filters)


def test_nothing_that_would_hide_the_tun_or_the_host_network(
    service: dict[str, list[str]],
) -> None:
    # Each of these looks like harmless extra hardening and would stop the
    # service: no /dev/net/tun, no host interfaces, no CAP_NET_ADMIN that counts,
    # or no /proc/sys.
    for key in ("PrivateDevices", "PrivateNetwork", "PrivateUsers", "ProcSubset"):
        assert key not in service


def test_proc_sys_is_writable_only_for_forwarding(service: dict[str, list[str]]) -> None:
    paths = one(service, "ReadWritePaths").split()
    assert sorted(paths) == ["-/proc/sys/net/ipv6/conf", "/proc/sys/net/ipv4/ip_forward"]


def test_directories_match_the_example_configuration(service: dict[str, list[str]]) -> None:
    assert one(service, "StateDirectory") == "outpost"
    assert one(service, "RuntimeDirectory") == "outpost"
    assert one(service, "RuntimeDirectoryMode") == "0700"  # control.py's expectation
    assert one(service, "ConfigurationDirectory") == "outpost"
    example = tomllib.loads(EXAMPLE.read_text())
    assert Path(example["store"]["path"]).parent == Path("/var/lib/outpost")
    assert Path(example["control"]["socket"]).parent == Path("/run/outpost")
    assert "/etc/outpost/concentrator.toml" in one(service, "ExecStart")


def test_start_reload_stop(service: dict[str, list[str]]) -> None:
    assert one(service, "ExecStart").endswith(
        "outpost-concentrator run --config /etc/outpost/concentrator.toml"
    )
    reload = service["ExecReload"]
    assert "check-config --config /etc/outpost/concentrator.toml" in reload[0]
    assert reload[-1] == "/bin/kill -HUP $MAINPID"
    assert one(service, "KillSignal") == "SIGTERM"
    # Room for the Deletes' answers and the data plane's exit.
    assert float(one(service, "TimeoutStopSec").rstrip("s")) >= SHUTDOWN_WAIT_S + 5
    assert one(service, "Restart") == "on-failure"
    assert one(service, "RestartPreventExitStatus") == "2"  # a config error


def test_nat_unit_is_oneshot_with_only_net_admin() -> None:
    unit = parse_unit(NAT_UNIT)
    service = unit["Service"]
    assert one(service, "Type") == "oneshot"
    assert one(service, "RemainAfterExit") == "yes"
    assert one(service, "CapabilityBoundingSet") == "CAP_NET_ADMIN"
    assert one(service, "ExecStop").endswith("outpost-nat --remove")
    assert "nftables.service" in one(unit["Unit"], "After")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("unit_path", [UNIT, NAT_UNIT], ids=lambda p: p.name)
def test_systemd_analyze_verify(unit_path: Path, tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: point it at this checkout.
    text = unit_path.read_text()
    text = text.replace("/opt/outpost/.venv/bin/", f"{Path(sys.executable).parent}/")
    text = text.replace("/usr/local/sbin/outpost-nat", str(DEPLOY / "outpost_nat.py"))
    copy = tmp_path / unit_path.name
    copy.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown key" not in result.stderr, result.stderr


# --- outpost_nat.py ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def nat() -> ModuleType:
    spec = importlib.util.spec_from_file_location("outpost_nat", DEPLOY / "outpost_nat.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["outpost_nat"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_nat_from_the_example_config(nat: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert nat.main(["--config", str(EXAMPLE), "--dry-run", "--lan-interface", "eth1"]) == 0
    script = capsys.readouterr().out
    # Replaced atomically: created if missing, deleted, defined again.
    assert "table ip outpost\ndelete table ip outpost\ntable ip outpost {" in script
    # The example's 10.99.0.0/24 and 10.99.1.0/24 collapse into one interval.
    assert (
        "ip saddr 10.99.100.0/24 ip daddr != 10.99.100.0/24 ip daddr { 10.99.0.0/23 } "
        'oifname "eth1" masquerade'
    ) in script
    assert "chain forward" not in script
    # No IPv6 pool in the example: the ip6 table is only deleted.
    assert script.rstrip().endswith("table ip6 outpost\ndelete table ip6 outpost")


def test_nat_ipv6_and_forward_filter(nat: ModuleType) -> None:
    plan = nat.Plan(
        pools=(nat.parse_network("10.99.100.0/24", "p"), nat.parse_network("fd00:1::/64", "p")),
        lan=(nat.parse_network("10.99.0.0/24", "l"), nat.parse_network("fd00:2::/64", "l")),
        forward_filter=True,
    )
    script = nat.render(plan)
    assert (
        "ip6 saddr fd00:1::/64 ip6 daddr != fd00:1::/64 ip6 daddr { fd00:2::/64 } masquerade"
        in (script)
    )
    assert "ip6 saddr fd00:1::/64 ip6 daddr { fd00:2::/64 } accept" in script
    assert "ip6 saddr fd00:1::/64 drop" in script
    assert "ip saddr 10.99.100.0/24 drop" in script


def test_nat_full_tunnel_masquerades_everything_and_filters_nothing(nat: ModuleType) -> None:
    plan = nat.Plan(
        pools=(nat.parse_network("10.99.100.0/24", "p"),),
        lan=(nat.parse_network("0.0.0.0/0", "l"),),
        forward_filter=True,
    )
    script = nat.render(plan)
    assert "ip saddr 10.99.100.0/24 ip daddr != 10.99.100.0/24 masquerade" in script
    assert "drop" not in script


def test_nat_remove_only_deletes(nat: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert nat.main(["--remove", "--dry-run"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert lines == [
        "table ip outpost",
        "delete table ip outpost",
        "table ip6 outpost",
        "delete table ip6 outpost",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["--pool", "10.99.100.1/24", "--lan-subnet", "10.99.0.0/24"],  # host bits
        ["--pool", "10.99.100.0/24"],  # no LAN
        ["--pool", "fd00::/64", "--lan-subnet", "10.99.0.0/24"],  # no common version
        ["--pool", "10.99.100.0/24", "--lan-subnet", "10.0.0.0/8", "--lan-interface", "a b"],
        ["--config", "/nonexistent/concentrator.toml"],
    ],
)
def test_nat_errors_are_one_line_and_exit_2(
    nat: ModuleType, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert nat.main([*argv, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("outpost-nat: ")
    assert err.count("\n") == 1
