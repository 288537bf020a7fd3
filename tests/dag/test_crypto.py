"""Account signatures: the Ed25519 backend (libsodium) agrees with RFC 8032 as OpenSSL does."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from dag.crypto import PublicKey, Scheme, Signature, SigningKey
from dag.errors import InvalidSignature

SEED = bytes(range(32))
MESSAGE = b"pay 3 credits on channel 7"


def test_ed25519_keys_and_signatures_are_those_of_openssl() -> None:
    ours = SigningKey(Scheme.ED25519, SEED)
    theirs = ed25519.Ed25519PrivateKey.from_private_bytes(SEED)
    assert ours.public_key.raw == theirs.public_key().public_bytes_raw()
    # Ed25519 signing is deterministic: both backends give the same bytes, and each verifies
    # the other's.
    assert ours.sign(MESSAGE).value == theirs.sign(MESSAGE)
    theirs.public_key().verify(ours.sign(MESSAGE).value, MESSAGE)
    ours.public_key.verify(Signature(Scheme.ED25519, theirs.sign(MESSAGE)), MESSAGE)


@pytest.mark.parametrize("scheme", list(Scheme))
def test_a_changed_message_or_signature_is_refused(scheme: Scheme) -> None:
    key = SigningKey(scheme, SEED)
    signature = key.sign(MESSAGE)
    key.public_key.verify(signature, MESSAGE)
    with pytest.raises(InvalidSignature, match="bad"):
        key.public_key.verify(signature, MESSAGE + b"0")
    flipped = bytes([signature.value[0] ^ 1]) + signature.value[1:]
    with pytest.raises(InvalidSignature, match="bad"):
        key.public_key.verify(Signature(scheme, flipped), MESSAGE)
    other = SigningKey(scheme, bytes(32))
    assert not other.public_key.is_valid(signature, MESSAGE)


def test_ed25519_refuses_a_small_order_key_and_a_non_canonical_signature() -> None:
    # The identity point as a key would accept a forged signature under lax verifiers.
    identity = PublicKey(Scheme.ED25519, bytes([1]) + bytes(31))
    forged = Signature(Scheme.ED25519, bytes([1]) + bytes(63))
    with pytest.raises(InvalidSignature):
        identity.verify(forged, MESSAGE)
    key = SigningKey(Scheme.ED25519, SEED)
    value = key.sign(MESSAGE).value
    # S + L (the group order) verifies under the equation but is not canonical.
    order = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(value[32:], "little") + order
    bent = Signature(Scheme.ED25519, value[:32] + s.to_bytes(32, "little"))
    with pytest.raises(InvalidSignature):
        key.public_key.verify(bent, MESSAGE)


def test_a_key_of_another_scheme_or_length_is_refused() -> None:
    key = SigningKey(Scheme.ED25519, SEED)
    with pytest.raises(InvalidSignature, match="does not match"):
        key.public_key.verify(Signature(Scheme.ML_DSA_65, key.sign(MESSAGE).value), MESSAGE)
    with pytest.raises(InvalidSignature, match="wrong length"):
        key.public_key.verify(Signature(Scheme.ED25519, b"\0" * 63), MESSAGE)
    with pytest.raises(InvalidSignature, match="32 bytes"):
        PublicKey.parse(Scheme.ED25519, b"\0" * 31)
