"""ESP (RFC 4303) in tunnel mode over UDP (RFC 3948): sans-IO core."""
