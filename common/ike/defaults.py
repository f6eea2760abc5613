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

# SA lifetimes (RFC 7296 2.8 leaves them to policy), strongSwan's semantics:
# rekey at ``rekey_time - random(0, rand_time)`` after the SA was made, and
# give it up at ``rekey_time + over_time`` if no rekey succeeded by then.
# charon's defaults: IKE SA 4 h, Child SA 1 h; over_time and rand_time are
# 10% of rekey_time when not set (``policy.IkeConfiguration``).
IKE_REKEY_TIME_S: Final = 4 * 3600.0
CHILD_REKEY_TIME_S: Final = 3600.0
OVER_TIME_FRACTION: Final = 0.1
RAND_TIME_FRACTION: Final = 0.1
# An automatic rekey that could not start (the window was busy, the SA was
# being rekeyed or deleted) or was refused (TEMPORARY_FAILURE, RFC 7296 2.25)
# is tried again after this, plus up to the jitter: charon's RETRY_INTERVAL
# and RETRY_JITTER, so two refused peers do not collide again in lockstep.
REKEY_RETRY_S: Final = 15.0
REKEY_RETRY_JITTER_S: Final = 10.0
