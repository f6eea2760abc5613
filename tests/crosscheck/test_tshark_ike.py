"""Cross-check with tshark: Wireshark's ISAKMP dissector reads (and, given keys, decrypts) our IKE.

An in-memory initiator and responder (tests/helpers/ike_pair.py) run IKE_SA_INIT +
IKE_AUTH; every datagram goes into a pcap as IPv4/UDP between 192.0.2.2 (initiator)
and 192.0.2.1 (responder), on port 500, or on 4500 behind the RFC 3948 non-ESP
marker once the pair has moved there (RFC 7296 2.23, forced with
``force_encapsulation``). tshark reads it once (PDML) and the tests check:

- every frame is ISAKMP version 2.0 with the exchange type, flags and message ID we sent,
  no malformed packet and no expert item of severity warning or above;
- AES-GCM-256: with an ``ikev2_decryption_table`` entry, the SK payloads decrypt
  (tshark says the ICV is "[correct]") to the IDi/IDr/CP/TS we sent, and a wrong
  SK_er makes frame 4 fail (so the check is not vacuous);
- ChaCha20-Poly1305: tshark 4.0 has no such IKEv2 algorithm, so only "not malformed";
- a fragmented IKE_AUTH (RFC 7383: RSA certificates and an intermediate CA,
  ``fragment_size`` 576, on 500 and on 4500): every ``HDR, SKF {...}`` datagram
  is ISAKMP as sent with its Fragment Number and Total Fragments, not malformed
  and without expert warnings; tshark 4.0 decrypts SKF with the same table
  entry, every fragment's ICV is "[correct]" (each is sealed on its own, RFC
  7383 2.5), and the message it reassembles from the last fragment holds the
  IDi/IDr, CERTs, signature AUTH, N(INITIAL_CONTACT) and CP we sent.

The SK_ei/SK_er given to tshark are derived here, independently of the session:
the initiator's ephemeral ``KeyExchange`` is recorded as it is generated, and
g^ir, the nonces and the SPIs come from the captured IKE_SA_INIT messages
(RFC 7296 2.14). UAT syntax and algorithm names: /work/shared/interop/vectors/README.md
"Decrypting with tshark" (SPIs and keys unquoted hex, SK_e with its salt).
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from common.ike import key_exchange
from common.ike.constants import (
    AuthMethod,
    ConfigType,
    ExchangeType,
    KeyExchangeMethod,
    NotifyType,
    PayloadType,
    PseudorandomFunction,
)
from common.ike.fragments import open_skf
from common.ike.ike_suites import IkeSuite, ike_suite_by_name
from common.ike.keys import IkeSaKeys, derive_ike_sa_keys
from common.ike.message import IKE_HEADER_LEN, EncryptedFragment, IkeMessage, decode_message
from common.ike.payloads import KeyExchange, Nonce
from common.ike.protection import open_sk
from common.ike.session import IkeSaState
from tests.helpers.ike_pair import (
    CLIENT_ID,
    GATEWAY_ID,
    OFFICE,
    POOL,
    Credentials,
    MemoryPolicy,
    ike_pair,
)
from tests.helpers.packets import ipv4_udp
from tests.helpers.pki import EPOCH, make_ca, make_leaf
from tests.helpers.vectors import write_pcap

pytestmark = pytest.mark.needs_tool("tshark")

INITIATOR_IP, RESPONDER_IP = "192.0.2.2", "192.0.2.1"
IKE_PORT, NAT_T_PORT = 500, 4500
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 2.2
EXPERT_WARNING = 0x00600000  # PI_WARN in epan/proto.h; notes and chats are allowed
TSHARK_GCM256 = "AES-GCM-256 with 16 octet ICV [RFC5282]"


@dataclass(frozen=True)
class Scenario:
    name: str
    ike: str
    esp: str
    encapsulate: bool
    decryptable: bool
    fragmented: bool = False  # RSA certificates and FRAGMENT_SIZE: IKE_AUTH in SKF


SCENARIOS = (
    Scenario("gcm-500", "aes256gcm16-prfsha256-x25519", "aes256gcm16", False, True),
    Scenario("gcm-4500", "aes256gcm16-prfsha256-x25519", "aes256gcm16", True, True),
    Scenario("gcm-ecp256-4500", "aes256gcm16-prfsha256-ecp256", "aes256gcm16", True, True),
    Scenario("chacha-500", "chacha20poly1305-prfsha256-x25519", "chacha20poly1305", False, False),
    Scenario("chacha-4500", "chacha20poly1305-prfsha256-x25519", "chacha20poly1305", True, False),
)
DECRYPTABLE = [s for s in SCENARIOS if s.decryptable]
FRAGMENTED = (
    Scenario("gcm-skf-500", "aes256gcm16-prfsha256-x25519", "aes256gcm16", False, True, True),
    Scenario("gcm-skf-4500", "aes256gcm16-prfsha256-x25519", "aes256gcm16", True, True, True),
)
FRAGMENT_SIZE = 576  # UDP payload, non-ESP marker included (RFC 7383 2.5.1)


@dataclass(frozen=True)
class Signers:
    """Both sides sign with RSA leaves under an intermediate CA: IKE_AUTH of about 2 kB."""

    policy: MemoryPolicy
    initiator: Credentials
    responder: Credentials


def make_signers() -> Signers:
    root = make_ca()
    intermediate = make_ca("Outpost Issuing CA", issuer=root, key_kind="rsa2048")
    client = make_leaf(
        intermediate, "alice", key_kind="rsa2048", emails=(CLIENT_ID.data.decode(),), rsa_pss=True
    )
    gateway = make_leaf(
        intermediate,
        GATEWAY_ID.data.decode(),
        key_kind="rsa2048",
        dns_names=(GATEWAY_ID.data.decode(),),
        rsa_pss=True,
    )
    chain = (intermediate.certificate,)
    return Signers(
        MemoryPolicy(cas=(root.certificate,)),
        Credentials(client.key, client.certificate, chain, (root.certificate,)),
        Credentials(gateway.key, gateway.certificate, chain),
    )


@dataclass(frozen=True)
class Sent:
    """One datagram we put in the capture."""

    frame: int
    from_initiator: bool
    sport: int
    dport: int
    message: IkeMessage
    data: bytes  # the IKE message, without the non-ESP marker


@dataclass
class Frame:
    """What tshark made of one frame: every field by name (in tree order) and its shownames."""

    shows: dict[str, list[str]] = field(default_factory=dict)
    values: dict[str, list[str]] = field(default_factory=dict)  # raw octets, hex
    shownames: dict[str, list[str]] = field(default_factory=dict)
    expert_severities: list[int] = field(default_factory=list)
    expert_messages: list[str] = field(default_factory=list)
    malformed: bool = False

    def show(self, name: str) -> list[str]:
        return self.shows.get(name, [])

    def value(self, name: str) -> list[str]:
        return self.values.get(name, [])


@dataclass(frozen=True)
class Capture:
    scenario: Scenario
    sent: list[Sent]
    keys: IkeSaKeys
    pcap: Path
    uat: str | None
    frames: dict[int, Frame]


# --- running the pair ---------------------------------------------------------------------


@contextmanager
def recorded_key_exchanges() -> Iterator[list[key_exchange.KeyExchange]]:
    """Every ``KeyExchange.generate`` result while the block runs (the private values stay
    inside the objects; we only call ``shared_secret`` on the initiator's)."""
    made: list[key_exchange.KeyExchange] = []
    original: Callable[..., key_exchange.KeyExchange] = key_exchange.KeyExchange.generate

    def recording(
        group: KeyExchangeMethod, rng: key_exchange.Rng | None = None
    ) -> key_exchange.KeyExchange:
        made_now = original(group) if rng is None else original(group, rng)
        made.append(made_now)
        return made_now

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(key_exchange.KeyExchange, "generate", staticmethod(recording))
        yield made


def run_handshake(
    scenario: Scenario, signers: Signers | None = None
) -> tuple[list[Sent], IkeSaKeys]:
    """IKE_SA_INIT + IKE_AUTH of ``scenario``; ``signers`` (and FRAGMENT_SIZE) when fragmented."""
    assert scenario.fragmented is (signers is not None)
    with recorded_key_exchanges() as made:
        pair = ike_pair(
            ike=(scenario.ike,),
            esp=(scenario.esp,),
            force_encapsulation=scenario.encapsulate,
            fragment_size=FRAGMENT_SIZE if signers else None,
            policy=signers.policy if signers else None,
            initiator_credentials=signers.initiator if signers else None,
            responder_credentials=signers.responder if signers else None,
            validation_time=EPOCH if signers else None,
        )
        pair.initiator.initiate(pair.clock.now)
        pair.run()
    assert pair.initiator.state is pair.responder.state is IkeSaState.ESTABLISHED
    sent = []
    for frame, (direction, data, source, destination) in enumerate(pair.wire, start=1):
        sent.append(
            Sent(frame, direction == "i->r", source[1], destination[1], decode_message(data), data)
        )
    return sent, derive_keys(scenario, sent, made)


def derive_keys(
    scenario: Scenario, sent: list[Sent], made: list[key_exchange.KeyExchange]
) -> IkeSaKeys:
    """SK_* from the captured IKE_SA_INIT and the initiator's recorded ephemeral key."""
    request, response = sent[0].message, sent[1].message
    ke_i, ke_r = request.get(KeyExchange), response.get(KeyExchange)
    nonce_i, nonce_r = request.get(Nonce), response.get(Nonce)
    assert ke_i is not None
    assert ke_r is not None
    assert nonce_i is not None
    assert nonce_r is not None
    ours = [ke for ke in made if ke.public_value == ke_i.data]
    assert len(ours) == 1, "the initiator's KE payload matches no generated KeyExchange"
    suite = suite_of(scenario)
    _skeyseed, keys = derive_ike_sa_keys(
        PseudorandomFunction.PRF_HMAC_SHA2_256,
        nonce_i.data,
        nonce_r.data,
        ours[0].shared_secret(ke_r.data),
        response.header.spi_i,
        response.header.spi_r,
        encr_key_len=suite.sk_e_len,
        integ_key_len=suite.sk_a_len,
    )
    return keys


def suite_of(scenario: Scenario) -> IkeSuite:
    return ike_suite_by_name(scenario.ike.split("-")[0])


# --- the capture and tshark ---------------------------------------------------------------


def write_capture(path: Path, sent: list[Sent]) -> None:
    packets = []
    for item in sent:
        src, dst = (
            (INITIATOR_IP, RESPONDER_IP) if item.from_initiator else (RESPONDER_IP, INITIATOR_IP)
        )
        data = item.data
        if NAT_T_PORT in (item.sport, item.dport):
            data = NON_ESP_MARKER + data
        packets.append(ipv4_udp(src, dst, sport=item.sport, dport=item.dport, data=data))
    write_pcap(path, packets)


def uat_line(spi_i: bytes, spi_r: bytes, keys: IkeSaKeys) -> str:
    # SPIi,SPIr,SK_ei,SK_er,"encryption",SK_ai,SK_ar,"integrity"; AEAD: SK_e with salt, no SK_a.
    return (
        f"uat:ikev2_decryption_table:{spi_i.hex()},{spi_r.hex()},{keys.sk_ei.hex()},"
        f'{keys.sk_er.hex()},"{TSHARK_GCM256}",,,"NONE [RFC4306]"'
    )


def run_tshark(pcap: Path, uat: str | None) -> dict[int, Frame]:
    command = ["tshark", "-n", "-r", str(pcap)]
    if uat is not None:
        command += ["-o", uat]
    command += ["-T", "pdml"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    frames: dict[int, Frame] = {}
    for packet in ElementTree.fromstring(result.stdout).iter("packet"):
        frame = Frame()
        for element in packet.iter():
            name = element.get("name", "")
            if name == "_ws.malformed":
                frame.malformed = True
            elif name == "_ws.expert.severity":
                frame.expert_severities.append(int(element.get("show", "0"), 0))
            elif name == "_ws.expert.message":
                frame.expert_messages.append(element.get("show", ""))
            if element.tag == "field":
                frame.shows.setdefault(name, []).append(element.get("show", ""))
                frame.values.setdefault(name, []).append(element.get("value", ""))
                frame.shownames.setdefault(name, []).append(element.get("showname", ""))
        number = int(frame.show("frame.number")[0])
        frames[number] = frame
    return frames


def make_capture(
    scenario: Scenario, tmp_path_factory: pytest.TempPathFactory, signers: Signers | None = None
) -> Capture:
    sent, keys = run_handshake(scenario, signers)
    pcap = tmp_path_factory.mktemp("tshark-ike") / f"outpost-ike-{scenario.name}.pcap"
    write_capture(pcap, sent)
    header = sent[1].message.header
    uat = uat_line(header.spi_i, header.spi_r, keys) if scenario.decryptable else None
    return Capture(scenario, sent, keys, pcap, uat, run_tshark(pcap, uat))


@pytest.fixture(scope="module", params=SCENARIOS, ids=[s.name for s in SCENARIOS])
def capture(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Capture:
    return make_capture(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def signers() -> Signers:
    return make_signers()


@pytest.fixture(scope="module", params=FRAGMENTED, ids=[s.name for s in FRAGMENTED])
def fragmented(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, signers: Signers
) -> Capture:
    return make_capture(request.param, tmp_path_factory, signers)


# --- tests --------------------------------------------------------------------------------


def test_the_capture_is_what_we_meant(capture: Capture) -> None:
    """IKE_SA_INIT on 500; IKE_AUTH on 4500 only when encapsulating; our keys open every SK."""
    exchanges = [s.message.header.exchange_type for s in capture.sent]
    assert exchanges == [ExchangeType.IKE_SA_INIT] * 2 + [ExchangeType.IKE_AUTH] * 2
    later = NAT_T_PORT if capture.scenario.encapsulate else IKE_PORT
    assert [(s.sport, s.dport) for s in capture.sent] == [(IKE_PORT, IKE_PORT)] * 2 + [
        (later, later)
    ] * 2
    suite = suite_of(capture.scenario)
    for item in capture.sent[2:]:
        sk_e = capture.keys.sk_ei if item.from_initiator else capture.keys.sk_er
        sk_a = capture.keys.sk_ai if item.from_initiator else capture.keys.sk_ar
        open_sk(item.data, IKE_HEADER_LEN, suite, sk_e, sk_a)  # raises if our keys were wrong


def test_every_frame_is_isakmp_v2_as_sent(capture: Capture) -> None:
    assert_isakmp_v2_as_sent(capture)


def assert_isakmp_v2_as_sent(capture: Capture) -> None:
    assert sorted(capture.frames) == [s.frame for s in capture.sent]
    for item in capture.sent:
        frame = capture.frames[item.frame]
        header = item.message.header
        assert frame.show("isakmp.version") == ["0x20"], item.frame
        assert frame.value("isakmp.ispi") == [header.spi_i.hex()], item.frame
        assert frame.value("isakmp.rspi") == [header.spi_r.hex()], item.frame
        assert frame.show("isakmp.exchangetype") == [str(int(header.exchange_type))], item.frame
        assert int(frame.show("isakmp.messageid")[0], 0) == header.message_id
        assert frame.show("isakmp.flag_i") == [str(int(header.initiator))], item.frame
        assert frame.show("isakmp.flag_r") == [str(int(header.response))], item.frame
        assert int(frame.show("isakmp.length")[0]) == len(item.data), item.frame
        if NAT_T_PORT in (item.sport, item.dport):
            assert frame.show("udpencap.nat_keepalive") == [], item.frame
            assert "udpencap" in frame.show("frame.protocols")[0], item.frame


def test_no_malformed_frame_and_no_expert_warning(capture: Capture) -> None:
    assert_clean(capture)


def assert_clean(capture: Capture) -> None:
    for number, frame in capture.frames.items():
        assert not frame.malformed, (number, frame.expert_messages)
        assert not [s for s in frame.expert_severities if s >= EXPERT_WARNING], (
            number,
            frame.expert_messages,
        )


def test_ike_sa_init_in_the_clear(capture: Capture) -> None:
    for item in capture.sent[:2]:
        frame = capture.frames[item.frame]
        ke = item.message.get(KeyExchange)
        nonce = item.message.get(Nonce)
        assert ke is not None
        assert nonce is not None
        assert frame.value("isakmp.key_exchange.data") == [ke.data.hex()], item.frame
        assert frame.value("isakmp.nonce") == [nonce.data.hex()], item.frame


def test_ike_auth_is_encrypted_and_decrypts_where_tshark_can(capture: Capture) -> None:
    for item in capture.sent[2:]:
        frame = capture.frames[item.frame]
        assert frame.show("isakmp.nextpayload")[0] == "46", item.frame  # SK (RFC 7296 3.14)
        assert frame.show("isakmp.enc.data") != [], item.frame
        if not capture.scenario.decryptable:
            # tshark 4.0 has no ChaCha20-Poly1305 in its IKEv2 table: nothing inside is shown.
            assert frame.show("isakmp.enc.decrypted") == [], item.frame
            assert frame.show("isakmp.id.type") == [], item.frame
    if capture.scenario.decryptable:
        check_decrypted_ike_auth(capture)


def check_decrypted_ike_auth(capture: Capture) -> None:
    request, response = (capture.frames[s.frame] for s in capture.sent[2:])
    for frame in (request, response):
        assert frame.show("isakmp.enc.decrypted") != []
        icv = frame.shownames["isakmp.enc.icd"]
        assert len(icv) == 1, icv
        assert icv[0].endswith("[correct]"), icv
    # HDR, SK {IDi, IDr, AUTH, CP(CFG_REQUEST), SAi2, TSi, TSr} -->
    assert request.show("isakmp.id.type") == [
        str(int(CLIENT_ID.id_type)),
        str(int(GATEWAY_ID.id_type)),
    ]
    assert request.show("isakmp.id.data.user_fqdn") == [CLIENT_ID.data.decode()]  # ID_RFC822_ADDR
    assert request.show("isakmp.id.data.fqdn") == [GATEWAY_ID.data.decode()]
    assert request.show("isakmp.auth.method") == ["2"]  # shared key MIC (RFC 7296 3.8)
    assert request.show("isakmp.cfg.type") == ["1"]  # CFG_REQUEST
    assert request.show("isakmp.prop.protoid") == ["3"]  # ESP
    # <-- HDR, SK {IDr, AUTH, CP(CFG_REPLY), SAr2, TSi, TSr}
    assert response.show("isakmp.id.type") == [str(int(GATEWAY_ID.id_type))]
    assert response.show("isakmp.id.data.fqdn") == [GATEWAY_ID.data.decode()]
    assert response.show("isakmp.auth.method") == ["2"]
    assert response.show("isakmp.cfg.type") == ["2"]  # CFG_REPLY
    assert response.show("isakmp.cfg.attr.internal_ip4_address") == [str(POOL[0])]
    assert response.show("isakmp.ts.start_ipv4")[0] == str(POOL[0])  # TSi = the lease
    assert response.show("isakmp.ts.start_ipv4")[1:] == [str(n.network_address) for n in OFFICE]


def test_wrong_key_is_noticed(tmp_path: Path) -> None:
    """The "[correct]" above means something: a wrong SK_er fails the IKE_AUTH response."""
    sent, keys = run_handshake(DECRYPTABLE[0])
    pcap = tmp_path / "outpost-ike-wrong-key.pcap"
    write_capture(pcap, sent)
    header = sent[1].message.header
    wrong = replace(keys, sk_er=bytes(b ^ 1 for b in keys.sk_er))
    frames = run_tshark(pcap, uat_line(header.spi_i, header.spi_r, wrong))
    request, response = frames[sent[2].frame], frames[sent[3].frame]
    assert request.shownames["isakmp.enc.icd"][0].endswith("[correct]")
    assert "[incorrect" in response.shownames["isakmp.enc.icd"][0]
    assert response.malformed


# --- a fragmented IKE_AUTH (RFC 7383) -----------------------------------------------------


def skf(item: Sent) -> EncryptedFragment:
    fragment = item.message.get(EncryptedFragment)
    assert fragment is not None, item.frame
    return fragment


def test_fragmented_capture_is_what_we_meant(fragmented: Capture) -> None:
    """IKE_AUTH goes as SKF fragments 1..n each way, each within FRAGMENT_SIZE, each
    opening on its own under our keys (RFC 7383 2.5, 2.6)."""
    marker = len(NON_ESP_MARKER) if fragmented.scenario.encapsulate else 0
    suite = suite_of(fragmented.scenario)
    for from_initiator in (True, False):
        items = [s for s in fragmented.sent[2:] if s.from_initiator is from_initiator]
        assert len(items) > 1
        numbers = [(skf(s).fragment_number, skf(s).total_fragments) for s in items]
        assert numbers == [(n, len(items)) for n in range(1, len(items) + 1)]
        for item in items:
            assert item.message.header.exchange_type == ExchangeType.IKE_AUTH
            assert marker + len(item.data) <= FRAGMENT_SIZE, item.frame
            keys = fragmented.keys
            sk_e, sk_a = (keys.sk_ei, keys.sk_ai) if from_initiator else (keys.sk_er, keys.sk_ar)
            open_skf(item.data, IKE_HEADER_LEN, suite, sk_e, sk_a)  # raises if it does not


def test_every_skf_fragment_decodes_without_malformed_or_expert_warning(
    fragmented: Capture,
) -> None:
    assert_isakmp_v2_as_sent(fragmented)
    assert_clean(fragmented)
    for item in fragmented.sent[2:]:
        frame = fragmented.frames[item.frame]
        assert frame.show("isakmp.nextpayload")[0] == str(int(PayloadType.SKF)), item.frame
        fragment = skf(item)
        assert frame.show("isakmp.frag.number") == [str(fragment.fragment_number)], item.frame
        assert frame.show("isakmp.frag.total") == [str(fragment.total_fragments)], item.frame


def test_every_skf_fragment_decrypts_with_a_good_checksum(fragmented: Capture) -> None:
    for item in fragmented.sent[2:]:
        frame = fragmented.frames[item.frame]
        assert frame.show("isakmp.enc.decrypted") != [], item.frame
        icv = frame.shownames["isakmp.enc.icd"]
        assert len(icv) == 1, (item.frame, icv)
        assert icv[0].endswith("[correct]"), (item.frame, icv)
    # tshark reassembles on the last fragment and dissects the whole message there.
    request, response = (
        fragmented.frames[
            max(s.frame for s in fragmented.sent[2:] if s.from_initiator is from_initiator)
        ]
        for from_initiator in (True, False)
    )
    signature = str(int(AuthMethod.DIGITAL_SIGNATURE))
    # HDR, SK {IDi, CERT, CERT, N(INITIAL_CONTACT), CERTREQ, IDr, AUTH, CP, SAi2, TSi, TSr} -->
    assert request.show("isakmp.id.type") == [
        str(int(CLIENT_ID.id_type)),
        str(int(GATEWAY_ID.id_type)),
    ]
    assert len(request.show("isakmp.cert.data")) == 2  # the leaf and the intermediate
    assert request.show("isakmp.auth.method") == [signature]
    assert str(int(NotifyType.INITIAL_CONTACT)) in request.show("isakmp.notify.msgtype")
    assert request.show("isakmp.cfg.type") == [str(int(ConfigType.CFG_REQUEST))]
    # <-- HDR, SK {IDr, CERT, CERT, AUTH, CP(CFG_REPLY), SAr2, TSi, TSr}
    assert response.show("isakmp.id.type") == [str(int(GATEWAY_ID.id_type))]
    assert len(response.show("isakmp.cert.data")) == 2
    assert response.show("isakmp.auth.method") == [signature]
    assert response.show("isakmp.cfg.attr.internal_ip4_address") == [str(POOL[0])]


def test_wrong_key_is_noticed_in_every_fragment(tmp_path: Path, signers: Signers) -> None:
    """The "[correct]" above means something: with a wrong SK_er every response
    fragment fails, while the request's, under the right SK_ei, still pass."""
    sent, keys = run_handshake(FRAGMENTED[0], signers)
    pcap = tmp_path / "outpost-ike-skf-wrong-key.pcap"
    write_capture(pcap, sent)
    header = sent[1].message.header
    wrong = replace(keys, sk_er=bytes(b ^ 1 for b in keys.sk_er))
    frames = run_tshark(pcap, uat_line(header.spi_i, header.spi_r, wrong))
    for item in sent[2:]:
        icv = frames[item.frame].shownames["isakmp.enc.icd"][0]
        if item.from_initiator:
            assert icv.endswith("[correct]"), item.frame
        else:
            assert "[incorrect" in icv, item.frame
