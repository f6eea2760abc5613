"""IKEv2 (RFC 7296) core; for now only the IANA registries the ESP core shares."""
