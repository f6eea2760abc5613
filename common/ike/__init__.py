"""IKEv2 (RFC 7296) core, sans-IO: registries, codecs, key derivation, exchanges."""
