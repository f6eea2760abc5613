"""Our SA proposals and their negotiation (RFC 7296 2.7, 3.3; RFC 5282 8).

Configuration names proposals the way strongSwan does, one string per
proposal, tokens joined by ``-``:

- IKE: ``aes256gcm16-prfsha256-x25519``, ``aes256-sha256-modp2048`` (CBC: the
  PRF defaults to the integrity hash, as in strongSwan), several tokens of one
  type allowed (``aes256gcm16-aes128gcm16-prfsha256-x25519-ecp256``);
- ESP: ``aes256gcm16``, ``aes128-sha256``, optionally ``-esn`` / ``-noesn``.

Selection is the responder's job: the first of the peer's proposals that we
accept, in the peer's order (RFC 7296 2.7), narrowed to exactly one transform
of each type, in the peer's order within the proposal as well. The initiator
then checks that the single proposal it got back is a subset of one of its
own (RFC 7296 2.7: "the responder MUST accept a single proposal or reject
them all"; 3.3.6: the reply carries one transform of each type).

Errors: ``NoProposalChosen`` (a ``LocalProtocolError`` carrying
NO_PROPOSAL_CHOSEN) when nothing matches, ``RemoteProtocolError`` when the
responder answered with something we never offered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from common.esp.suites import EspSuite, suite_for_transforms
from common.ike.constants import (
    EncryptionAlgorithm,
    ExtendedSequenceNumbers,
    IntegrityAlgorithm,
    KeyExchangeMethod,
    NotifyType,
    ProtocolId,
    PseudorandomFunction,
    TransformAttribute,
    TransformType,
)
from common.ike.errors import LocalProtocolError, RemoteProtocolError
from common.ike.ike_suites import IkeSuite, ike_suite_for_transforms
from common.ike.payloads import Proposal, SecurityAssociation, Transform

# Keyword -> (ENCR id, key length in bits or None when the cipher takes none).
# RFC 7634 section 2: ChaCha20-Poly1305 has a fixed key and no Key Length attribute.
_ENCRYPTION: Final[dict[str, tuple[EncryptionAlgorithm, int | None]]] = {
    "aes128gcm16": (EncryptionAlgorithm.ENCR_AES_GCM_16, 128),
    "aes256gcm16": (EncryptionAlgorithm.ENCR_AES_GCM_16, 256),
    "chacha20poly1305": (EncryptionAlgorithm.ENCR_CHACHA20_POLY1305, None),
    "aes128": (EncryptionAlgorithm.ENCR_AES_CBC, 128),
    "aes256": (EncryptionAlgorithm.ENCR_AES_CBC, 256),
}
_AEAD: Final = frozenset(
    {EncryptionAlgorithm.ENCR_AES_GCM_16, EncryptionAlgorithm.ENCR_CHACHA20_POLY1305}
)
_INTEGRITY: Final[dict[str, IntegrityAlgorithm]] = {
    "sha256": IntegrityAlgorithm.AUTH_HMAC_SHA2_256_128,
    "sha384": IntegrityAlgorithm.AUTH_HMAC_SHA2_384_192,
    "sha512": IntegrityAlgorithm.AUTH_HMAC_SHA2_512_256,
}
_PRF: Final[dict[str, PseudorandomFunction]] = {
    "prfsha256": PseudorandomFunction.PRF_HMAC_SHA2_256,
    "prfsha384": PseudorandomFunction.PRF_HMAC_SHA2_384,
    "prfsha512": PseudorandomFunction.PRF_HMAC_SHA2_512,
}
# strongSwan derives the PRF from the integrity keyword when none is given.
_PRF_OF_INTEGRITY: Final[dict[IntegrityAlgorithm, PseudorandomFunction]] = {
    IntegrityAlgorithm.AUTH_HMAC_SHA2_256_128: PseudorandomFunction.PRF_HMAC_SHA2_256,
    IntegrityAlgorithm.AUTH_HMAC_SHA2_384_192: PseudorandomFunction.PRF_HMAC_SHA2_384,
    IntegrityAlgorithm.AUTH_HMAC_SHA2_512_256: PseudorandomFunction.PRF_HMAC_SHA2_512,
}
_GROUPS: Final[dict[str, KeyExchangeMethod]] = {
    "x25519": KeyExchangeMethod.CURVE25519,
    "curve25519": KeyExchangeMethod.CURVE25519,
    "ecp256": KeyExchangeMethod.ECP_256,
    "ecp384": KeyExchangeMethod.ECP_384,
    "modp2048": KeyExchangeMethod.MODP_2048,
}
_ESN: Final[dict[str, ExtendedSequenceNumbers]] = {
    "esn": ExtendedSequenceNumbers.EXTENDED_SEQUENCE_NUMBERS,
    "noesn": ExtendedSequenceNumbers.NO_EXTENDED_SEQUENCE_NUMBERS,
}


T = TypeVar("T")


class NoProposalChosen(LocalProtocolError):  # noqa: N818 - named after the Notify
    """None of the peer's proposals is acceptable (RFC 7296 2.7, 3.10.1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, NotifyType.NO_PROPOSAL_CHOSEN)


@dataclass(frozen=True, slots=True)
class IkeAlgorithms:
    """What one negotiated IKE proposal means: the SK suite, the PRF and the KE group."""

    suite: IkeSuite
    prf: PseudorandomFunction
    group: KeyExchangeMethod


@dataclass(frozen=True, slots=True)
class EspAlgorithms:
    """What one negotiated ESP proposal means: the ESP suite and whether ESN is on."""

    suite: EspSuite
    esn: bool


# --- building our proposals -----------------------------------------------------------


def _encryption_transforms(tokens: Iterable[str]) -> list[Transform]:
    return [
        Transform.make(TransformType.ENCR, *_ENCRYPTION[token])
        for token in tokens
        if token in _ENCRYPTION
    ]


def _check_tokens(spec: str, tokens: list[str], known: Iterable[Mapping[str, object]]) -> None:
    vocabulary = {word for words in known for word in words}
    unknown = [token for token in tokens if token not in vocabulary]
    if unknown:
        raise ValueError(f"proposal {spec!r}: unknown keyword(s) {', '.join(unknown)}")


def _check_aead_mix(spec: str, encryption: list[Transform]) -> bool:
    kinds = {transform.transform_id in _AEAD for transform in encryption}
    if not encryption:
        raise ValueError(f"proposal {spec!r} names no encryption algorithm")
    # RFC 5282 8: AEAD and non-AEAD ciphers go in separate proposals.
    if len(kinds) > 1:
        raise ValueError(f"proposal {spec!r} mixes AEAD and non-AEAD ciphers")
    return kinds.pop()


def ike_proposal(spec: str, number: int = 1) -> Proposal:
    """Our IKE proposal for one configuration string (SPI empty, RFC 7296 3.3.1).

    Raises:
        ValueError: unknown keyword, no cipher, no group, AEAD mixed with CBC, or
            CBC without integrity, or AEAD without a PRF.
    """
    tokens = spec.lower().split("-")
    _check_tokens(spec, tokens, (_ENCRYPTION, _INTEGRITY, _PRF, _GROUPS))
    encryption = _encryption_transforms(tokens)
    aead = _check_aead_mix(spec, encryption)
    integrity = [_INTEGRITY[token] for token in tokens if token in _INTEGRITY]
    prfs = [_PRF[token] for token in tokens if token in _PRF]
    groups = [_GROUPS[token] for token in tokens if token in _GROUPS]
    if aead and integrity:
        raise ValueError(f"proposal {spec!r}: AEAD ciphers take no integrity algorithm")
    if not aead and not integrity:
        raise ValueError(f"proposal {spec!r}: CBC needs an integrity algorithm")
    if not prfs:
        if aead:
            raise ValueError(f"proposal {spec!r}: an AEAD proposal must name its PRF")
        prfs = [_PRF_OF_INTEGRITY[alg] for alg in integrity]
    if not groups:
        raise ValueError(f"proposal {spec!r} names no key exchange group")
    transforms = [
        *encryption,
        *(Transform.make(TransformType.PRF, alg) for alg in _unique(prfs)),
        *(Transform.make(TransformType.INTEG, alg) for alg in _unique(integrity)),
        *(Transform.make(TransformType.KE, group) for group in _unique(groups)),
    ]
    return Proposal(number, ProtocolId.IKE, b"", tuple(transforms))


def esp_proposal(spec: str, number: int = 1, spi: bytes = b"\x00\x00\x00\x00") -> Proposal:
    """Our ESP proposal for one configuration string; ESN off unless ``-esn`` is given.

    Raises:
        ValueError: unknown keyword, no cipher, or an inconsistent cipher/integrity mix.
    """
    tokens = spec.lower().split("-")
    _check_tokens(spec, tokens, (_ENCRYPTION, _INTEGRITY, _ESN))
    encryption = _encryption_transforms(tokens)
    aead = _check_aead_mix(spec, encryption)
    integrity = [_INTEGRITY[token] for token in tokens if token in _INTEGRITY]
    esn = [_ESN[token] for token in tokens if token in _ESN] or [
        ExtendedSequenceNumbers.NO_EXTENDED_SEQUENCE_NUMBERS
    ]
    if aead and integrity:
        raise ValueError(f"proposal {spec!r}: AEAD ciphers take no integrity algorithm")
    if not aead and not integrity:
        raise ValueError(f"proposal {spec!r}: CBC needs an integrity algorithm")
    transforms = [
        *encryption,
        *(Transform.make(TransformType.INTEG, alg) for alg in _unique(integrity)),
        # RFC 7296 3.3.2: an ESP proposal always carries the ESN transform.
        *(Transform.make(TransformType.ESN, value) for value in _unique(esn)),
    ]
    return Proposal(number, ProtocolId.ESP, spi, tuple(transforms))


def ike_proposals(specs: Sequence[str]) -> tuple[Proposal, ...]:
    """Our IKE SA payload's proposals, numbered from 1 (RFC 7296 3.3.1)."""
    return tuple(ike_proposal(spec, number) for number, spec in enumerate(specs, 1))


def esp_proposals(specs: Sequence[str], spi: bytes = b"\x00\x00\x00\x00") -> tuple[Proposal, ...]:
    """Our ESP proposals, numbered from 1, each carrying our inbound ``spi``."""
    return tuple(esp_proposal(spec, number, spi) for number, spec in enumerate(specs, 1))


def proposal_groups(proposals: Iterable[Proposal]) -> list[KeyExchangeMethod]:
    """Every KE group of ``proposals``, first occurrence first (the guess order for KEi)."""
    groups: list[KeyExchangeMethod] = []
    for proposal in proposals:
        for transform in proposal.transforms:
            if transform.transform_type == TransformType.KE:
                groups.append(KeyExchangeMethod(transform.transform_id))
    return _unique(groups)


def _unique(items: Iterable[T]) -> list[T]:
    return list(dict.fromkeys(items))


# --- selection (responder) ------------------------------------------------------------


def _transform_key(transform: Transform) -> tuple[int, int, int | None]:
    return transform.transform_type, transform.transform_id, transform.key_length


def _understood(transform: Transform) -> bool:
    # RFC 7296 3.3.6: a transform with an attribute we do not understand is
    # rejected; Key Length is the only attribute IKEv2 defines.
    return all(
        attr.attr_type == TransformAttribute.KEY_LENGTH and isinstance(attr.value, int)
        for attr in transform.attributes
    )


def _types_of(proposal: Proposal) -> set[int]:
    types = {transform.transform_type for transform in proposal.transforms}
    # RFC 5282 8: an AEAD proposal may carry INTEG NONE; it means "no INTEG".
    if all(
        transform.transform_id == IntegrityAlgorithm.NONE
        for transform in proposal.transforms
        if transform.transform_type == TransformType.INTEG
    ):
        types.discard(TransformType.INTEG)
    return types


def _match(offered: Proposal, ours: Proposal, prefer_group: int | None) -> Proposal | None:
    """One transform of each type from ``offered`` that ``ours`` also holds, or None."""
    if offered.protocol_id != ours.protocol_id or _types_of(offered) != _types_of(ours):
        return None
    acceptable = {_transform_key(transform) for transform in ours.transforms}
    chosen: dict[int, Transform] = {}
    for transform in offered.transforms:  # the peer's order (RFC 7296 2.7)
        kind = transform.transform_type
        if kind not in _types_of(ours) or not _understood(transform):
            continue
        if _transform_key(transform) not in acceptable:
            continue
        if kind == TransformType.KE and transform.transform_id == prefer_group:
            chosen[kind] = transform  # the group of KEi saves a round trip (RFC 7296 1.2)
        else:
            chosen.setdefault(kind, transform)
    if set(chosen) != _types_of(ours):
        return None
    transforms = tuple(chosen[kind] for kind in sorted(chosen))
    return Proposal(offered.number, offered.protocol_id, offered.spi, transforms)


def select_proposal(
    offered: SecurityAssociation, ours: Sequence[Proposal], *, prefer_group: int | None = None
) -> Proposal:
    """The responder's choice: the first acceptable proposal in the peer's order.

    Args:
        offered: the peer's SA payload.
        ours: our acceptable proposals.
        prefer_group: the group of the peer's KE payload; when the chosen proposal
            allows it, it is taken over an earlier one, so no INVALID_KE_PAYLOAD
            round trip is needed (RFC 7296 1.2).

    Returns:
        The peer's proposal (its number and SPI) reduced to exactly one
        transform of each type (RFC 7296 3.3.6).

    Raises:
        NoProposalChosen: nothing acceptable (RFC 7296 2.7).
    """
    for proposal in offered.proposals:
        for own in ours:
            chosen = _match(proposal, own, prefer_group)
            if chosen is not None:
                return chosen
    raise NoProposalChosen("no acceptable proposal among the peer's")


def validate_chosen(answer: SecurityAssociation, ours: Sequence[Proposal]) -> Proposal:
    """The initiator's check of the responder's SA payload.

    Raises:
        RemoteProtocolError: not exactly one proposal, not one transform of each
            type, or transforms we never offered (RFC 7296 2.7, 3.3.6).
    """
    if len(answer.proposals) != 1:
        raise RemoteProtocolError(
            f"responder chose {len(answer.proposals)} proposals", NotifyType.NO_PROPOSAL_CHOSEN
        )
    (chosen,) = answer.proposals
    kinds = [transform.transform_type for transform in chosen.transforms]
    if len(kinds) != len(set(kinds)):
        raise RemoteProtocolError(
            "responder chose several transforms of one type", NotifyType.NO_PROPOSAL_CHOSEN
        )
    for own in ours:
        if own.number != chosen.number:
            continue
        matched = _match(chosen, own, None)
        if matched is not None and all(
            transform in matched.transforms
            or (
                transform.transform_type == TransformType.INTEG
                and transform.transform_id == IntegrityAlgorithm.NONE
            )
            for transform in chosen.transforms
        ):
            return matched
    raise RemoteProtocolError(
        "responder chose a proposal we did not offer", NotifyType.NO_PROPOSAL_CHOSEN
    )


# --- meaning of a chosen proposal -----------------------------------------------------


def _only(proposal: Proposal, kind: TransformType) -> Transform | None:
    for transform in proposal.transforms:
        if transform.transform_type == kind:
            return transform
    return None


def ike_algorithms(proposal: Proposal) -> IkeAlgorithms:
    """The suite, PRF and group a chosen IKE proposal names.

    Raises:
        NoProposalChosen: a combination we accepted by transform but cannot run
            (only possible with a hand-made ``ours``).
    """
    encr = _only(proposal, TransformType.ENCR)
    prf = _only(proposal, TransformType.PRF)
    integ = _only(proposal, TransformType.INTEG)
    group = _only(proposal, TransformType.KE)
    if encr is None or prf is None or group is None:
        raise NoProposalChosen("IKE proposal without ENCR, PRF or KE")
    suite = ike_suite_for_transforms(
        encr.transform_id, encr.key_length, None if integ is None else integ.transform_id
    )
    if suite is None:
        raise NoProposalChosen("IKE proposal names an unimplemented suite")
    return IkeAlgorithms(
        suite, PseudorandomFunction(prf.transform_id), KeyExchangeMethod(group.transform_id)
    )


def esp_algorithms(proposal: Proposal) -> EspAlgorithms:
    """The ESP suite and ESN setting a chosen ESP proposal names.

    Raises:
        NoProposalChosen: a combination we cannot run.
    """
    encr = _only(proposal, TransformType.ENCR)
    integ = _only(proposal, TransformType.INTEG)
    esn = _only(proposal, TransformType.ESN)
    if encr is None:
        raise NoProposalChosen("ESP proposal without ENCR")
    key_bits = encr.key_length
    if key_bits is None and encr.transform_id == EncryptionAlgorithm.ENCR_CHACHA20_POLY1305:
        key_bits = 256  # RFC 7634 2: fixed key, no Key Length attribute
    suite = None
    if key_bits is not None:
        suite = suite_for_transforms(
            EncryptionAlgorithm(encr.transform_id),
            key_bits,
            IntegrityAlgorithm.NONE if integ is None else IntegrityAlgorithm(integ.transform_id),
        )
    if suite is None:
        raise NoProposalChosen("ESP proposal names an unimplemented suite")
    return EspAlgorithms(
        suite,
        esn is not None and esn.transform_id == ExtendedSequenceNumbers.EXTENDED_SEQUENCE_NUMBERS,
    )
