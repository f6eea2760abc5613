"""Implementation defaults of the IKE core, kept apart from the spec constants.

Nothing here is an RFC value: these are our choices (wireguard-go keeps its
timers in ``constants.go`` for the same reason), each with the reasoning or
the implementation it follows.
"""

from __future__ import annotations

from typing import Final

# Retransmission of an unanswered request (RFC 7296 2.1 leaves the schedule to
# the implementation). strongSwan's charon defaults: timeout 4 s, base 1.8,
# 5 retransmissions, so a dead peer is declared after about 165 s.
RETRANSMIT_TIMEOUT_S: Final = 4.0
RETRANSMIT_BASE: Final = 1.8
RETRANSMIT_TRIES: Final = 5

# RFC 7296 2.10: nonces at least half the PRF key size and at least 128 bits;
# 32 octets cover every PRF we negotiate (SHA2-512 halves to 32).
NONCE_LEN: Final = 32

# Our offers when the configuration names none (RFC 8247 recommendations,
# AEAD first, X25519 first).
IKE_PROPOSALS: Final = ("aes256gcm16-prfsha256-x25519-ecp256",)
ESP_PROPOSALS: Final = ("aes256gcm16",)

# IKE ports (RFC 7296 2, RFC 3948 / RFC 7296 2.23 for NAT traversal).
IKE_PORT: Final = 500
NAT_T_PORT: Final = 4500

# RFC 7296 2.6 COOKIE. The responder's secret changes every two minutes and the
# previous one is still accepted, so a cookie lives between 2 and 4 minutes:
# far longer than a retry takes, short enough that a captured cookie soon dies.
COOKIE_SECRET_LIFETIME_S: Final = 120.0
# The initiator answers at most this many N(COOKIE) responses per IKE_SA_INIT
# (RFC 7296 2.6 asks initiators to limit their cookie exchanges): one for the
# challenge, one if the responder's
# secret changed in between, one for a duplicated or reordered response.
COOKIE_RETRIES: Final = 3
