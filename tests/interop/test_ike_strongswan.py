"""IKE_SA_INIT + IKE_AUTH (PSK) between our IkeSession and a real strongSwan 5.9.8.

Every test builds the same three-namespace topology::

    [laptop] to-gw 192.0.2.2/24 ======== 192.0.2.1/24 to-laptop [gw]
     rw.lab.example                                   gw.lab.example
                                                      to-office 10.99.0.1/24
                                                               ||
                                          10.99.0.10/24 to-gw [office]

    virtual IPs come from 10.99.100.0/24 (strongSwan's pool, or our policy's leases)

One end runs ``tests/helpers/ike_driver.py`` (our core over real UDP 500/4500),
the other charon with kernel-libipsec. ESP-in-UDP is forced (``encap=yes`` /
``force_encapsulation``), so IKE_AUTH travels on 4500 with the non-ESP
marker, as behind a NAT. Only IKE is checked here; ESP is another test.

The last tests go past IKE_AUTH: CREATE_CHILD_SA rekeys (Child SA with PFS,
IKE SA) and INFORMATIONAL exchanges (DPD, Delete) started by strongSwan
(``swanctl --rekey`` / ``--terminate``) and by us (driver commands on stdin),
each checked on both sides: our driver's events and strongSwan's ``--list-sas``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.ike_driver import DriverProcess
from tests.helpers.netns import Host, NetnsLab
from tests.helpers.strongswan import StrongSwan, SwanChildSa, SwanConnection, SwanIkeSa

LAPTOP_IP = "192.0.2.2"
GATEWAY_IP = "192.0.2.1"
CLIENT_ID = "rw.lab.example"
GATEWAY_ID = "gw.lab.example"
PSK = "lab-psk-not-secret-0123456789abcdef"
WRONG_PSK = "not-the-lab-psk-at-all-0123456789"
POOL = "10.99.100.0/24"
OFFICE = "10.99.0.0/24"

CIPHERS = ("aes256gcm16", "chacha20poly1305")
GROUPS = ("x25519", "ecp256")  # IANA 31 and 19
SUITES = [pytest.param(c, g, id=f"{c}-{g}") for c in CIPHERS for g in GROUPS]

pytestmark = [pytest.mark.privileged, pytest.mark.needs_tool("/usr/lib/ipsec/charon")]


@dataclass
class Lab:
    laptop: Host
    gw: Host
    tmp_path: Path


@pytest.fixture
def lab(netns_lab: NetnsLab, tmp_path: Path) -> Lab:
    laptop = netns_lab.add_host("laptop")
    gw = netns_lab.add_host("gw")
    netns_lab.link(laptop, gw, addr_a=f"{LAPTOP_IP}/24", addr_b=f"{GATEWAY_IP}/24")
    # The office network, so a strongSwan gateway has a source address for the
    # route it installs towards a client's virtual IP (kernel-libipsec, table 220).
    office = netns_lab.add_host("office")
    netns_lab.link(gw, office, addr_a="10.99.0.1/24", addr_b="10.99.0.10/24")
    return Lab(laptop, gw, tmp_path)


def _gateway_swan(lab: Lab, *, ike: str, esp: str, psk: str = PSK) -> StrongSwan:
    """strongSwan as the concentrator in ``gw``: pool, office subnet, PSK."""
    swan = StrongSwan(lab.gw, lab.tmp_path / "swan-gw")
    swan.start(
        SwanConnection(
            local_addr=GATEWAY_IP,
            local_id=GATEWAY_ID,
            remote_id=CLIENT_ID,
            psk=psk,
            ike_proposal=ike,
            esp_proposal=esp,
            pool=POOL,
            local_ts=OFFICE,
            name="rw",
        )
    )
    return swan


def _laptop_swan(lab: Lab, *, psk: str = PSK, esp: str = "aes256gcm16") -> StrongSwan:
    """strongSwan as the road warrior in ``laptop``: vips = 0.0.0.0, encap = yes."""
    swan = StrongSwan(lab.laptop, lab.tmp_path / "swan-laptop")
    swan.start(
        SwanConnection(
            local_addr=LAPTOP_IP,
            remote_addr=GATEWAY_IP,
            local_id=CLIENT_ID,
            remote_id=GATEWAY_ID,
            psk=psk,
            esp_proposal=esp,
            vips="0.0.0.0",
            remote_ts=OFFICE,
            name="home",
        )
    )
    return swan


def _our_initiator(
    lab: Lab, *, ike: str, esp: str, psk: str = PSK, pfs: str | None = None
) -> DriverProcess:
    return DriverProcess(
        lab.laptop,
        [
            *("--role", "initiator", "--local", LAPTOP_IP, "--remote", GATEWAY_IP),
            *("--local-id", CLIENT_ID, "--remote-id", GATEWAY_ID, "--psk", psk),
            *("--ike", ike, "--esp", esp, "--force-encap", "--lifetime", "20"),
            *(("--pfs", pfs) if pfs else ()),
        ],
    )


def _our_responder(lab: Lab, *, psk: str = PSK, pfs: str | None = None) -> DriverProcess:
    driver = DriverProcess(
        lab.gw,
        [
            *("--role", "responder", "--local", GATEWAY_IP, "--local-id", GATEWAY_ID),
            *("--psk", psk, "--pool-start", "10.99.100.7", "--subnet", OFFICE),
            *("--dns", "10.99.0.53", "--ike", "aes256gcm16-prfsha256-x25519"),
            *("--esp", "aes256gcm16", "--force-encap", "--lifetime", "20"),
            *(("--pfs", pfs) if pfs else ()),
        ],
    )
    driver.wait_for("ready")
    return driver


def _ike_sa_block(list_sas: str, name: str) -> str:
    assert re.search(rf"^{name}: #\d+, ESTABLISHED, IKEv2", list_sas, re.MULTILINE), list_sas
    return list_sas


def _child_remote_ts(list_sas: str) -> list[str]:
    """The ``remote`` TS lines of the (INSTALLED) Child SA in ``swanctl --list-sas``."""
    assert re.search(r"office: #\d+, reqid \d+, INSTALLED, TUNNEL-in-UDP", list_sas), list_sas
    return re.findall(r"^\s+remote (\d+\.\d+\.\d+\.\d+/\d+)\s*$", list_sas, re.MULTILINE)


@pytest.mark.parametrize(("cipher", "group"), SUITES)
def test_our_initiator_to_strongswan_responder(lab: Lab, cipher: str, group: str) -> None:
    """Our initiator gets an IKE SA, a Child SA and a pool address from strongSwan.

    [laptop] ike_driver --role initiator  ===>  [gw] charon: pool 10.99.100.0/24,
                                                     local_ts 10.99.0.0/24
    IKE_SA_INIT on 500 -->/<--, IKE_AUTH on 4500 (encap forced) -->/<--
    """
    ike = f"{cipher}-prfsha256-{group}"
    swan = _gateway_swan(lab, ike=ike, esp=cipher)
    driver = _our_initiator(lab, ike=ike, esp=cipher)
    try:
        established = driver.wait_for("ike_sa_established", "ike_sa_failed", timeout=10)
        assert established["event"] == "ike_sa_established", established
        assert established["remote_id"] == GATEWAY_ID
        address = driver.wait_for("address_assigned", timeout=2)["address"]
        child = driver.wait_for("child_sa_established", timeout=2)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{swan.logs()}") from None
    assert address.startswith("10.99.100.")
    assert child["local_ts"] == [f"{address}-{address}"]
    assert child["remote_ts"] == ["10.99.0.0-10.99.0.255"]

    sas = swan.list_sas()
    _ike_sa_block(sas, "rw")
    assert f"remote 'rw.lab.example' @ {LAPTOP_IP}[4500] [{address}]" in sas, sas
    assert _child_remote_ts(sas) == [f"{address}/32"], sas
    expected_cipher = {"aes256gcm16": "AES_GCM_16-256", "chacha20poly1305": "CHACHA20_POLY1305"}
    expected_group = {"x25519": "CURVE_25519", "ecp256": "ECP_256"}
    assert f"{expected_cipher[cipher]}/PRF_HMAC_SHA2_256/{expected_group[group]}" in sas, sas
    assert driver.stop() == 0


def test_strongswan_initiator_to_our_responder(lab: Lab) -> None:
    """strongSwan (vips = 0.0.0.0, encap = yes) gets the address our responder leases.

    [laptop] charon: vips 0.0.0.0,           ===>  [gw] ike_driver --role responder:
             remote_ts 10.99.0.0/24                     lease 10.99.100.7, 10.99.0.0/24
    """
    driver = _our_responder(lab)
    swan = _laptop_swan(lab)
    error = swan.initiate()
    assert error is None, f"{error}\n{driver.collect()}\n{swan.logs()}"
    established = driver.wait_for("ike_sa_established", timeout=2)
    assert established["remote_id"] == CLIENT_ID
    child = driver.wait_for("child_sa_established", timeout=2)
    assert child["remote_ts"] == ["10.99.100.7-10.99.100.7"]
    assert child["local_ts"] == ["10.99.0.0-10.99.0.255"]

    sas = swan.list_sas()
    _ike_sa_block(sas, "home")
    assert f"local  'rw.lab.example' @ {LAPTOP_IP}[4500] [10.99.100.7]" in sas, sas
    assert _child_remote_ts(sas) == [OFFICE], sas
    assert re.search(r"^\s+local  10\.99\.100\.7/32\s*$", sas, re.MULTILINE), sas
    assert driver.stop() == 0


def test_our_initiator_with_wrong_psk_is_refused(lab: Lab) -> None:
    """strongSwan answers IKE_AUTH with AUTHENTICATION_FAILED; no SA stays on either side.

    [laptop] ike_driver (wrong PSK) ===> [gw] charon  <-- N(AUTHENTICATION_FAILED)
    """
    ike = "aes256gcm16-prfsha256-x25519"
    swan = _gateway_swan(lab, ike=ike, esp="aes256gcm16")
    driver = _our_initiator(lab, ike=ike, esp="aes256gcm16", psk=WRONG_PSK)
    failed = driver.wait_for("ike_sa_established", "ike_sa_failed", timeout=10)
    assert failed["event"] == "ike_sa_failed", failed
    assert failed["notify"] == "AUTHENTICATION_FAILED", failed
    assert driver.process.wait(timeout=5) == 1
    assert "ESTABLISHED" not in swan.list_sas()
    assert "but MAC mismatched" in swan.log.read_text(), swan.logs()
    assert "generating IKE_AUTH response 1 [ N(AUTH_FAILED) ]" in swan.log.read_text()


def test_strongswan_initiator_with_wrong_psk_is_refused(lab: Lab) -> None:
    """Our responder refuses strongSwan's AUTH; strongSwan's --initiate fails.

    [laptop] charon (wrong PSK) ===> [gw] ike_driver  --> N(AUTHENTICATION_FAILED)
    """
    driver = _our_responder(lab)
    swan = _laptop_swan(lab, psk=WRONG_PSK)
    error = swan.initiate(timeout_s=5)
    assert error is not None, swan.list_sas()
    failed = driver.wait_for("ike_sa_established", "ike_sa_failed", timeout=5)
    assert failed["event"] == "ike_sa_failed", failed
    assert failed["notify"] == "AUTHENTICATION_FAILED", failed
    assert "ESTABLISHED" not in swan.list_sas()
    assert "received AUTHENTICATION_FAILED notify error" in swan.log.read_text(), swan.logs()


# --- after IKE_AUTH: rekeys and INFORMATIONAL, either side starting -----------------------

IKE_PFS = "aes256gcm16-prfsha256-x25519"
ESP_PFS = "aes256gcm16-x25519"  # strongSwan: PFS with x25519 on every CREATE_CHILD_SA
ESP_PFS_LISTED = "ESP:AES_GCM_16-256/CURVE_25519"


def _only_sa(sas: list[SwanIkeSa], name: str) -> tuple[SwanIkeSa, SwanChildSa] | None:
    """The one ESTABLISHED IKE SA ``name`` and its one INSTALLED Child SA, else None."""
    if len(sas) != 1 or sas[0].name != name or sas[0].state != "ESTABLISHED":
        return None
    if len(sas[0].children) != 1 or sas[0].children[0].state != "INSTALLED":
        return None
    return sas[0], sas[0].children[0]


def _wait_child(swan: StrongSwan, name: str, ours: dict[str, object]) -> SwanChildSa:
    """strongSwan shows exactly our Child SA ``ours`` (an event), mirrored: its in is our out."""

    def matches(sas: list[SwanIkeSa]) -> bool:
        only = _only_sa(sas, name)
        return only is not None and (only[1].spi_in, only[1].spi_out) == (
            ours["outbound_spi"],
            ours["inbound_spi"],
        )

    what = f"one Child SA in {ours['outbound_spi']} out {ours['inbound_spi']}"
    sas = swan.wait_sas(matches, what=what)
    return sas[0].children[0]


def _wait_ike(swan: StrongSwan, name: str, spi_i: str, spi_r: str) -> SwanIkeSa:
    """strongSwan shows exactly one IKE SA ``name``, ESTABLISHED under ``spi_i``/``spi_r``."""

    def matches(sas: list[SwanIkeSa]) -> bool:
        only = _only_sa(sas, name)
        return only is not None and (only[0].spi_i, only[0].spi_r) == (spi_i, spi_r)

    return swan.wait_sas(matches, what=f"one IKE SA {spi_i}_i {spi_r}_r")[0]


def _expect_rekeyed_child(
    driver: DriverProcess, old: dict[str, object], *, timeout: float = 5
) -> dict[str, object]:
    """``child_sa_rekeyed`` of ``old``, with fresh SPIs, then the old SA's ``child_sa_deleted``."""
    rekeyed = driver.wait_for("child_sa_rekeyed", "rekey_failed", timeout=timeout)
    assert rekeyed["event"] == "child_sa_rekeyed", rekeyed
    assert (rekeyed["old_inbound_spi"], rekeyed["old_outbound_spi"]) == (
        old["inbound_spi"],
        old["outbound_spi"],
    ), (rekeyed, old)
    assert rekeyed["inbound_spi"] != old["inbound_spi"], rekeyed
    assert rekeyed["outbound_spi"] != old["outbound_spi"], rekeyed
    assert (rekeyed["local_ts"], rekeyed["remote_ts"]) == (old["local_ts"], old["remote_ts"])
    deleted = driver.wait_for("child_sa_deleted", timeout=timeout)
    assert (deleted["inbound_spi"], deleted["outbound_spi"]) == (
        old["inbound_spi"],
        old["outbound_spi"],
    ), (deleted, old)
    return rekeyed


def _log_count(swan: StrongSwan, line: str) -> int:
    return swan.log.read_text(errors="replace").count(line)


def test_strongswan_gateway_rekeys_and_terminates_our_initiator(lab: Lab) -> None:
    """strongSwan rekeys the Child SA (PFS) and the IKE SA; then we run DPD and both
    rekeys ourselves; strongSwan's ``--terminate`` ends it all.

    [laptop] ike_driver --pfs x25519        [gw] charon, esp_proposals aes256gcm16-x25519
    <-- CREATE_CHILD_SA {N(REKEY_SA), SA, Ni, KEi, TSi, TSr}   swanctl --rekey --child
    <-- INFORMATIONAL {D(ESP old)}
    <-- CREATE_CHILD_SA {SA(IKE), Ni, KEi}                     swanctl --rekey --ike
    <-- INFORMATIONAL {D(IKE old)}                             (under the old IKE SA)
    --> INFORMATIONAL {}                                       check_liveness
    --> CREATE_CHILD_SA {N(REKEY_SA), ...}, --> D(ESP old)     rekey_child
    --> CREATE_CHILD_SA {SA(IKE), ...}, --> D(IKE old)         rekey_ike
    <-- INFORMATIONAL {D(IKE)}                                 swanctl --terminate --ike
    """
    swan = _gateway_swan(lab, ike=IKE_PFS, esp=ESP_PFS)
    driver = _our_initiator(lab, ike=IKE_PFS, esp="aes256gcm16", pfs="x25519")
    try:
        ike = driver.wait_for("ike_sa_established", "ike_sa_failed", timeout=10)
        assert ike["event"] == "ike_sa_established", ike
        child = driver.wait_for("child_sa_established", timeout=2)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{swan.logs()}") from None
    _wait_ike(swan, "rw", ike["spi_i"], ike["spi_r"])
    _wait_child(swan, "rw", child)

    # strongSwan rekeys the Child SA, with a KE payload (PFS)
    swan.rekey(child="office")
    child = _expect_rekeyed_child(driver, child)
    assert _wait_child(swan, "rw", child).proposal == ESP_PFS_LISTED
    log = swan.log.read_text(errors="replace")
    assert re.search(r"generating CREATE_CHILD_SA request \d+ \[ N\(REKEY_SA\) SA No KE", log), log

    # strongSwan rekeys the IKE SA: it is the new SA's initiator (RFC 7296 2.18)
    swan.rekey(ike="rw")
    rekeyed = driver.wait_for("ike_sa_rekeyed", timeout=5)
    assert (rekeyed["old_spi_i"], rekeyed["old_spi_r"]) == (ike["spi_i"], ike["spi_r"])
    assert {rekeyed["spi_i"], rekeyed["spi_r"]}.isdisjoint({ike["spi_i"], ike["spi_r"]})
    _wait_ike(swan, "rw", rekeyed["spi_i"], rekeyed["spi_r"])
    _wait_child(swan, "rw", child)  # moved over unchanged

    # our DPD on the new IKE SA (its message IDs start again at 0)
    before = _log_count(swan, "generating INFORMATIONAL response 0 [ ]")
    driver.command("check_liveness")
    assert driver.wait_for("idle", timeout=5)["after"] == "check_liveness"
    assert _log_count(swan, "parsed INFORMATIONAL request 0 [ ]") == 1, swan.logs()
    assert _log_count(swan, "generating INFORMATIONAL response 0 [ ]") == before + 1

    # we rekey the Child SA (PFS too), then the IKE SA
    driver.command(f"rekey_child {child['inbound_spi']}")
    child = _expect_rekeyed_child(driver, child)
    assert driver.wait_for("idle", timeout=5)["after"].startswith("rekey_child")
    assert _wait_child(swan, "rw", child).proposal == ESP_PFS_LISTED
    log = swan.log.read_text(errors="replace")
    assert re.search(r"parsed CREATE_CHILD_SA request 1 \[ N\(REKEY_SA\) SA No KE", log), log

    driver.command("rekey_ike")
    ours = driver.wait_for("ike_sa_rekeyed", timeout=5)
    assert (ours["old_spi_i"], ours["old_spi_r"]) == (rekeyed["spi_i"], rekeyed["spi_r"])
    assert driver.wait_for("idle", timeout=5)["after"] == "rekey_ike"  # old one deleted too
    _wait_ike(swan, "rw", ours["spi_i"], ours["spi_r"])
    _wait_child(swan, "rw", child)

    # strongSwan deletes the IKE SA: the Child SA goes with it, the driver leaves
    swan.terminate("rw")
    deleted = driver.wait_for("child_sa_deleted", timeout=5)
    assert deleted["inbound_spi"] == child["inbound_spi"], deleted
    assert driver.wait_for("ike_sa_deleted", timeout=5)["by_peer"] is True
    assert driver.process.wait(timeout=5) == 0, driver.stderr
    assert swan.sas() == []
    stopped = driver.wait_for("stopped", timeout=2)
    assert not stopped["drops"], stopped


def test_strongswan_initiator_rekeys_and_terminates_at_our_responder(lab: Lab) -> None:
    """strongSwan as the road warrior rekeys the Child SA (PFS) and the IKE SA, then
    terminates.

    [laptop] charon, esp_proposals aes256gcm16-x25519      [gw] ike_driver --pfs x25519
    CREATE_CHILD_SA {N(REKEY_SA), SA, Ni, KEi, TSi, TSr} -->   swanctl --rekey --child
    INFORMATIONAL {D(ESP old)} -->
    CREATE_CHILD_SA {SA(IKE), Ni, KEi} -->                     swanctl --rekey --ike
    INFORMATIONAL {D(IKE old)} -->                             (under the old IKE SA)
    INFORMATIONAL {D(IKE)} -->                                 swanctl --terminate --ike
    """
    driver = _our_responder(lab, pfs="x25519")
    swan = _laptop_swan(lab, esp=ESP_PFS)
    error = swan.initiate()
    assert error is None, f"{error}\n{driver.collect()}\n{swan.logs()}"
    ike = driver.wait_for("ike_sa_established", timeout=2)
    child = driver.wait_for("child_sa_established", timeout=2)
    _wait_ike(swan, "home", ike["spi_i"], ike["spi_r"])
    _wait_child(swan, "home", child)

    swan.rekey(child="office")
    child = _expect_rekeyed_child(driver, child)
    assert _wait_child(swan, "home", child).proposal == ESP_PFS_LISTED

    swan.rekey(ike="home")
    rekeyed = driver.wait_for("ike_sa_rekeyed", timeout=5)
    assert (rekeyed["old_spi_i"], rekeyed["old_spi_r"]) == (ike["spi_i"], ike["spi_r"])
    _wait_ike(swan, "home", rekeyed["spi_i"], rekeyed["spi_r"])
    _wait_child(swan, "home", child)

    swan.terminate("home")
    assert driver.wait_for("child_sa_deleted", timeout=5)["inbound_spi"] == child["inbound_spi"]
    assert driver.wait_for("ike_sa_deleted", timeout=5)["by_peer"] is True
    assert driver.process.wait(timeout=5) == 0, driver.stderr
    assert swan.sas() == []
    stopped = driver.wait_for("stopped", timeout=2)
    assert not stopped["drops"], stopped
