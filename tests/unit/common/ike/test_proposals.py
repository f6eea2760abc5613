"""Proposal building and negotiation (RFC 7296 2.7, 3.3; RFC 5282 8; RFC 7634 2)."""

from __future__ import annotations

import pytest

from common.ike.constants import (
    EncryptionAlgorithm,
    ExtendedSequenceNumbers,
    IntegrityAlgorithm,
    KeyExchangeMethod,
    NotifyType,
    ProtocolId,
    PseudorandomFunction,
    TransformType,
)
from common.ike.errors import RemoteProtocolError
from common.ike.payloads import Proposal, SecurityAssociation, Transform, TransformAttr
from common.ike.proposals import (
    NoProposalChosen,
    esp_algorithms,
    esp_proposal,
    esp_proposals,
    ike_algorithms,
    ike_proposal,
    ike_proposals,
    proposal_groups,
    select_proposal,
    validate_chosen,
)

ENCR, PRF, INTEG, KE, ESN = (
    TransformType.ENCR,
    TransformType.PRF,
    TransformType.INTEG,
    TransformType.KE,
    TransformType.ESN,
)


def test_aead_ike_proposal_carries_key_length_and_no_integrity() -> None:
    proposal = ike_proposal("aes256gcm16-prfsha256-x25519-ecp256")
    assert proposal == Proposal(
        1,
        ProtocolId.IKE,
        b"",
        (
            Transform.make(ENCR, EncryptionAlgorithm.ENCR_AES_GCM_16, 256),
            Transform.make(PRF, PseudorandomFunction.PRF_HMAC_SHA2_256),
            Transform.make(KE, KeyExchangeMethod.CURVE25519),
            Transform.make(KE, KeyExchangeMethod.ECP_256),
        ),
    )


def test_chacha20_has_no_key_length_attribute() -> None:
    # RFC 7634 2: fixed 256-bit key, the attribute is not sent.
    (encr, *_) = ike_proposal("chacha20poly1305-prfsha256-x25519").transforms
    assert encr == Transform(ENCR, EncryptionAlgorithm.ENCR_CHACHA20_POLY1305)


def test_cbc_ike_proposal_takes_its_prf_from_the_integrity_hash() -> None:
    kinds = {
        (t.transform_type, t.transform_id)
        for t in ike_proposal("aes256-sha384-modp2048").transforms
    }
    assert (PRF, PseudorandomFunction.PRF_HMAC_SHA2_384) in kinds
    assert (INTEG, IntegrityAlgorithm.AUTH_HMAC_SHA2_384_192) in kinds


@pytest.mark.parametrize(
    "spec",
    [
        "aes256gcm16-x25519",  # AEAD without PRF
        "aes256-x25519",  # CBC without integrity
        "aes256gcm16-sha256-prfsha256-x25519",  # AEAD with integrity
        "aes256gcm16-aes256-sha256-prfsha256-x25519",  # mixed (RFC 5282 8)
        "aes256gcm16-prfsha256",  # no group
        "des-prfsha256-x25519",  # unknown keyword
    ],
)
def test_bad_ike_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="proposal"):
        ike_proposal(spec)


def test_esp_proposal_has_spi_and_esn_none() -> None:
    proposal = esp_proposal("aes128-sha256", 2, b"\x00\x00\x12\x34")
    assert proposal.number == 2
    assert proposal.protocol_id == ProtocolId.ESP
    assert proposal.spi == b"\x00\x00\x12\x34"
    assert proposal.transforms[-1] == Transform.make(
        ESN, ExtendedSequenceNumbers.NO_EXTENDED_SEQUENCE_NUMBERS
    )
    assert esp_algorithms(proposal).suite.name == "aes128-sha256"


def test_proposals_are_numbered_and_groups_listed_in_order() -> None:
    ours = ike_proposals(["aes256gcm16-prfsha256-ecp384", "aes128gcm16-prfsha256-x25519-ecp384"])
    assert [p.number for p in ours] == [1, 2]
    assert proposal_groups(ours) == [KeyExchangeMethod.ECP_384, KeyExchangeMethod.CURVE25519]


def test_selection_follows_the_peers_order() -> None:
    peer = SecurityAssociation(
        ike_proposals(["aes128gcm16-prfsha256-x25519", "aes256gcm16-prfsha256-x25519"])
    )
    ours = ike_proposals(["aes256gcm16-prfsha256-x25519", "aes128gcm16-prfsha256-x25519"])
    chosen = select_proposal(peer, ours)
    assert chosen.number == 1  # the peer's first, although it is our second
    assert ike_algorithms(chosen).suite.name == "aes128gcm16"


def test_selection_returns_one_transform_of_each_type() -> None:
    peer = SecurityAssociation(
        (ike_proposal("aes256gcm16-aes128gcm16-prfsha384-prfsha256-ecp256-x25519"),)
    )
    ours = ike_proposals(["aes128gcm16-aes256gcm16-prfsha256-prfsha384-x25519-ecp256"])
    chosen = select_proposal(peer, ours)
    assert [t.transform_type for t in chosen.transforms] == [ENCR, PRF, KE]
    algorithms = ike_algorithms(chosen)
    assert algorithms.suite.name == "aes256gcm16"  # the peer's preference
    assert algorithms.prf is PseudorandomFunction.PRF_HMAC_SHA2_384
    assert algorithms.group is KeyExchangeMethod.ECP_256


def test_selection_prefers_the_group_of_kei() -> None:
    peer = SecurityAssociation((ike_proposal("aes256gcm16-prfsha256-ecp256-x25519"),))
    ours = ike_proposals(["aes256gcm16-prfsha256-x25519-ecp256"])
    chosen = select_proposal(peer, ours, prefer_group=KeyExchangeMethod.CURVE25519)
    assert ike_algorithms(chosen).group is KeyExchangeMethod.CURVE25519


def test_key_length_must_match() -> None:
    peer = SecurityAssociation((ike_proposal("aes128gcm16-prfsha256-x25519"),))
    with pytest.raises(NoProposalChosen) as excinfo:
        select_proposal(peer, ike_proposals(["aes256gcm16-prfsha256-x25519"]))
    assert excinfo.value.notify is NotifyType.NO_PROPOSAL_CHOSEN


def test_unknown_attribute_rejects_the_transform() -> None:
    # RFC 7296 3.3.6: a transform with an attribute we do not understand is rejected.
    weird = Transform(ENCR, EncryptionAlgorithm.ENCR_AES_GCM_16, (TransformAttr(99, 1),))
    own = ike_proposal("aes256gcm16-prfsha256-x25519")
    peer = SecurityAssociation((Proposal(1, ProtocolId.IKE, b"", (weird, *own.transforms[1:])),))
    with pytest.raises(NoProposalChosen):
        select_proposal(peer, (own,))


def test_aead_proposal_with_integ_none_is_accepted() -> None:
    # RFC 5282 8: INTEG NONE may accompany an AEAD cipher.
    own = ike_proposal("aes256gcm16-prfsha256-x25519")
    none = Transform(INTEG, IntegrityAlgorithm.NONE)
    peer = SecurityAssociation((Proposal(1, ProtocolId.IKE, b"", (*own.transforms, none)),))
    assert INTEG not in [t.transform_type for t in select_proposal(peer, (own,)).transforms]


def test_esp_selection_keeps_the_peers_spi() -> None:
    peer = SecurityAssociation(esp_proposals(["aes256gcm16", "aes128-sha256"], b"\xaa\xbb\xcc\xdd"))
    chosen = select_proposal(peer, esp_proposals(["aes128-sha256"]))
    assert chosen.spi == b"\xaa\xbb\xcc\xdd"
    assert chosen.number == 2
    assert esp_algorithms(chosen).suite.name == "aes128-sha256"
    assert not esp_algorithms(chosen).esn


def test_esp_without_esn_transform_is_not_chosen() -> None:
    own = esp_proposal("aes256gcm16")
    peer = SecurityAssociation(
        (Proposal(1, ProtocolId.ESP, b"\x00\x00\x01\x00", own.transforms[:1]),)
    )
    with pytest.raises(NoProposalChosen):
        select_proposal(peer, (own,))


def test_initiator_accepts_a_subset_of_its_offer() -> None:
    ours = ike_proposals(["aes256gcm16-prfsha256-x25519-ecp256"])
    answer = select_proposal(SecurityAssociation(ours), ours)
    assert validate_chosen(SecurityAssociation((answer,)), ours) == answer


@pytest.mark.parametrize(
    "answer",
    [
        # two proposals
        SecurityAssociation(ike_proposals(["aes256gcm16-prfsha256-x25519"] * 2)),
        # two groups in the answer
        SecurityAssociation((ike_proposal("aes256gcm16-prfsha256-x25519-ecp256"),)),
        # never offered
        SecurityAssociation((ike_proposal("aes128gcm16-prfsha256-x25519"),)),
    ],
)
def test_initiator_refuses_a_bad_answer(answer: SecurityAssociation) -> None:
    ours = ike_proposals(["aes256gcm16-prfsha256-x25519-ecp256"])
    with pytest.raises(RemoteProtocolError):
        validate_chosen(answer, ours)
