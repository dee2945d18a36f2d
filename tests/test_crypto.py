"""ed25519 through our typed API (RFC 8032 vectors and negative cases), domain separation,
addresses, dev keys and the domain-separated SHA-256 (brief §7, §10; STYLE item 9)."""

from __future__ import annotations

import hashlib

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deltachain.crypto import hashing
from deltachain.crypto.hashing import Hash32, as_hash32, sha256, tagged_hash
from deltachain.crypto.keys import (
    DOMAIN_SEAL,
    DOMAIN_TX,
    DOMAIN_VOTE,
    Address,
    Keypair,
    PublicKey,
    address_to_str,
    parse_address,
    signing_payload,
    verify,
)
from deltachain.errors import BadSignature, CryptoError, DecodeError, InvalidKey

# --- RFC 8032 §7.1 test vectors: (secret key, public key, message, signature), hex --------------

RFC8032_TEST_1 = (
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    "",
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
)
RFC8032_TEST_2 = (
    "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
    "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
    "72",
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
)
RFC8032_TEST_3 = (
    "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
    "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
    "af82",
    "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
)
RFC8032_TEST_1024 = (
    "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
    "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
    "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98fa6e264bf09efe12ee50f8f54e9f77"
    "b1e355f6c50544e23fb1433ddf73be84d879de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20"
    "329d658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc1a858efcb8550ee3a5e1998bd1"
    "77e93a7363c344fe6b199ee5d02e82d522c4feba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d"
    "1a36553e06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbefefd75499da96bd68a8a97b"
    "928a8bbc103b6621fcde2beca1231d206be6cd9ec7aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8"
    "ac70bdcb7ed185ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2d17ba70eb6248e594e"
    "1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24554119a831a9aad6079cad88425de6bde1a9187ebb6092cf"
    "67bf2b13fd65f27088d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc2732e69485bbc9"
    "c90bfbd62481d9089beccf80cfe2df16a2cf65bd92dd597b0707e0917af48bbb75fed413d238f5555a7a569d80c341"
    "4a8d0859dc65a46128bab27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51addd3b75a2b"
    "1ae0784504df543af8969be3ea7082ff7fc9888c144da2af58429ec96031dbcad3dad9af0dcbaaaf268cb8fcffead9"
    "4f3c7ca495e056a9b47acdb751fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c42f58c"
    "30c04aafdb038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8ca61783aacec57fb3d1f92b0fe2fd1a85f67"
    "24517b65e614ad6808d6f6ee34dff7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08d7"
    "8ff4ef5d63653a65040cf9bfd4aca7984a74d37145986780fc0b16ac451649de6188a7dbdf191f64b5fc5e2ab47b57"
    "f7f7276cd419c17a3ca8e1b939ae49e488acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600"
    "a32ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e6aed3fb0f9cd71a43dd497f01f17"
    "c0e2cb3797aa2a2f256656168e6c496afc5fb93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876"
    "e506b50d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d90d11faa933a15ef1369546868a7f3a45a96768d4"
    "0fd9d03412c091c6315cf4fde7cb68606937380db2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64df"
    "ac86aba41c0618983f8741c5ef68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0",
    "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
)
RFC8032_TEST_SHA_ABC = (
    "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
    "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
    "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
    "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
    "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
)

VECTORS = {
    "TEST 1": RFC8032_TEST_1,
    "TEST 2": RFC8032_TEST_2,
    "TEST 3": RFC8032_TEST_3,
    "TEST 1024": RFC8032_TEST_1024,
    "TEST SHA(abc)": RFC8032_TEST_SHA_ABC,
}
MESSAGE_LENGTHS = {"TEST 1": 0, "TEST 2": 1, "TEST 3": 2, "TEST 1024": 1023, "TEST SHA(abc)": 64}

# The group order L of ed25519; S + L is the classic malleated signature.
ED25519_L = 2**252 + 27742317777372353535851937790883648493

GENESIS = Hash32(hashlib.sha256(b"test genesis").digest())
OTHER_GENESIS = Hash32(hashlib.sha256(b"another chain").digest())

# Keypair.dev("alice"), computed once; it is in docs and dev chain specs, so it must never move.
ALICE_ADDRESS_HEX = "0xd01b9078ed5942d06f188cfa9cf078784bf215e5a44ba91e4b7e6dd806afe889"


def unhex(vector: tuple[str, str, str, str]) -> tuple[bytes, bytes, bytes, bytes]:
    seed, public, message, signature = vector
    return (
        bytes.fromhex(seed),
        bytes.fromhex(public),
        bytes.fromhex(message),
        bytes.fromhex(signature),
    )


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --- the vectors ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VECTORS)
def test_vector_constants_agree_with_pynacl(name: str) -> None:
    """The hex typed in above is checked against libsodium directly, not only through our API."""
    seed, public, message, signature = unhex(VECTORS[name])
    assert len(message) == MESSAGE_LENGTHS[name]
    signing_key = nacl.signing.SigningKey(seed)
    assert bytes(signing_key.verify_key) == public
    assert signing_key.sign(message).signature == signature
    nacl.signing.VerifyKey(public).verify(message, signature)


def test_sha_abc_vector_message_is_sha512_of_abc() -> None:
    assert bytes.fromhex(RFC8032_TEST_SHA_ABC[2]) == hashlib.sha512(b"abc").digest()


@pytest.mark.parametrize("name", VECTORS)
def test_vector_through_our_api(name: str) -> None:
    seed, public, message, signature = unhex(VECTORS[name])
    keypair = Keypair(seed)
    assert keypair.public_key.raw == public
    assert keypair.address == public
    assert keypair.seed == seed
    assert keypair.sign(message) == signature  # ed25519 signing is deterministic
    PublicKey.from_bytes(public).verify(message, signature)
    verify(Address(public), message, signature)


@pytest.mark.parametrize("name", VECTORS)
def test_vector_rejects_flipped_message_bits(name: str) -> None:
    _, public, message, signature = unhex(VECTORS[name])
    key = PublicKey.from_bytes(public)
    if not message:
        with pytest.raises(BadSignature):
            key.verify(b"\x00", signature)
        return
    for bit in {0, 7, len(message) * 4, len(message) * 8 - 1}:
        with pytest.raises(BadSignature):
            key.verify(flip_bit(message, bit), signature)
    with pytest.raises(BadSignature):
        key.verify(message + b"\x00", signature)
    with pytest.raises(BadSignature):
        key.verify(message[:-1], signature)


@pytest.mark.parametrize("name", VECTORS)
@pytest.mark.parametrize("bit", [0, 100, 255, 256, 300, 511])  # R half and S half
def test_vector_rejects_flipped_signature_bit(name: str, bit: int) -> None:
    _, public, message, signature = unhex(VECTORS[name])
    with pytest.raises(BadSignature):
        PublicKey.from_bytes(public).verify(message, flip_bit(signature, bit))


def test_signature_does_not_verify_under_another_key() -> None:
    _, _, message, signature = unhex(RFC8032_TEST_2)
    _, other_public, _, _ = unhex(RFC8032_TEST_3)
    with pytest.raises(BadSignature):
        PublicKey.from_bytes(other_public).verify(message, signature)


def test_malleated_signature_s_plus_l_is_rejected() -> None:
    """Same R, S + L: equal modulo L, so a lax verifier accepts it; libsodium must not."""
    _, public, message, signature = unhex(RFC8032_TEST_1)
    s = int.from_bytes(signature[32:], "little")
    malleated = signature[:32] + (s + ED25519_L).to_bytes(32, "little")
    assert malleated != signature
    with pytest.raises(BadSignature):
        PublicKey.from_bytes(public).verify(message, malleated)


def test_identity_key_with_trivial_signature_is_rejected() -> None:
    """A = identity, R = identity, S = 0 satisfies the cofactored equation for every message."""
    identity = b"\x01" + b"\x00" * 31
    key = PublicKey.from_bytes(identity)  # 32 bytes: the length check alone admits it
    with pytest.raises(BadSignature):
        key.verify(b"any message at all", identity + b"\x00" * 32)


# --- malformed keys, seeds and signatures -----------------------------------------------------


@pytest.mark.parametrize(
    "seed", [b"", b"\x00" * 31, b"\x00" * 33, b"\x00" * 64, bytearray(32), "00" * 32, None, 0]
)
def test_keypair_rejects_malformed_seed(seed: object) -> None:
    with pytest.raises(InvalidKey):
        Keypair(seed)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw", [b"", b"\x01" * 31, b"\x01" * 33, b"\x01" * 64, bytearray(32), "01" * 32, None]
)
def test_public_key_rejects_malformed_bytes(raw: object) -> None:
    with pytest.raises(InvalidKey):
        PublicKey.from_bytes(raw)  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        PublicKey(raw)  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        verify(raw, b"message", b"\x00" * 64)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "signature",
    [b"", b"\x00" * 63, b"\x00" * 65, "00" * 64, None, 0, [0] * 64],
)
def test_verify_rejects_malformed_signature(signature: object) -> None:
    _, public, message, _ = unhex(RFC8032_TEST_2)
    with pytest.raises(BadSignature):
        PublicKey.from_bytes(public).verify(message, signature)  # type: ignore[arg-type]


def test_good_signature_as_bytearray_or_truncated_is_rejected() -> None:
    _, public, message, signature = unhex(RFC8032_TEST_2)
    key = PublicKey.from_bytes(public)
    with pytest.raises(BadSignature):
        key.verify(message, bytearray(signature))  # type: ignore[arg-type]
    with pytest.raises(BadSignature):
        key.verify(message, signature[:-1])
    with pytest.raises(BadSignature):
        key.verify(message, signature + b"\x00")


def test_errors_are_in_the_crypto_tree() -> None:
    assert issubclass(InvalidKey, CryptoError)
    assert issubclass(BadSignature, CryptoError)


# --- domain separation ------------------------------------------------------------------------


def test_signing_payload_layout() -> None:
    body = b"\xa1\x61a\x01"
    payload = signing_payload(DOMAIN_TX, GENESIS, body)
    assert payload == bytes([len(DOMAIN_TX)]) + DOMAIN_TX + GENESIS + body


def test_domains_are_distinct() -> None:
    assert len({DOMAIN_TX, DOMAIN_SEAL, DOMAIN_VOTE}) == 3


def test_tx_signature_is_bound_to_domain_and_genesis() -> None:
    alice = Keypair.dev("alice")
    body = b"\x85\x01\x02\x03\x04\x05"
    signature = alice.sign(signing_payload(DOMAIN_TX, GENESIS, body))
    alice.public_key.verify(signing_payload(DOMAIN_TX, GENESIS, body), signature)
    for other in (
        signing_payload(DOMAIN_SEAL, GENESIS, body),
        signing_payload(DOMAIN_VOTE, GENESIS, body),
        signing_payload(DOMAIN_TX, OTHER_GENESIS, body),
        signing_payload(DOMAIN_TX, GENESIS, body + b"\x00"),
        body,
    ):
        with pytest.raises(BadSignature):
            alice.public_key.verify(other, signature)


def test_domain_tag_is_length_prefixed() -> None:
    """A domain that extends another cannot produce the same payload by moving bytes around."""
    short = signing_payload(b"deltachain/tx", GENESIS, b"/v1" + GENESIS)
    long = signing_payload(b"deltachain/tx/v1", GENESIS, GENESIS)
    assert short != long


# --- addresses --------------------------------------------------------------------------------


@given(st.binary(min_size=32, max_size=32))
@settings(max_examples=50)
def test_parse_address_round_trips(raw: bytes) -> None:
    text = address_to_str(Address(raw))
    assert text == "0x" + raw.hex()
    assert parse_address(text) == raw
    assert parse_address(text.upper().replace("0X", "0x")) == raw
    assert parse_address("0X" + raw.hex()) == raw


def test_parse_address_accepts_bare_hex() -> None:
    """Documented: the ``0x`` may be left out."""
    raw = bytes(range(32))
    assert parse_address(raw.hex()) == raw


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0x",
        "0x" + "ab" * 31,  # 62 digits
        "0x" + "ab" * 33,  # 66 digits
        "0x" + "a" * 63,  # odd: a digit missing
        "0x" + "a" * 65,
        "0x" + "g" * 64,  # not hex
        "0x" + "ab" * 31 + "zz",
        "0x" + "ab " * 32,  # bytes.fromhex would skip the spaces
        " 0x" + "ab" * 32,
        "0x" + "ab" * 32 + "\n",
        "0x" + "ab" * 16 + " " + "ab" * 16,
        "0x0x" + "ab" * 31,
        "0x+" + "a" * 63,
        "0x" + "\u0661" * 64,  # Arabic-Indic digit one: a digit, but not hex
        "0x" + "ab" * 32 + "\x00",
    ],
)
def test_parse_address_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidKey):
        parse_address(text)


@pytest.mark.parametrize("value", [None, 0, b"\x00" * 32, ["0x" + "00" * 32]])
def test_parse_address_rejects_non_strings_with_invalid_key(value: object) -> None:
    """Callers pass JSON values straight through (RPC params, genesis lists)."""
    with pytest.raises(InvalidKey):
        parse_address(value)  # type: ignore[arg-type]


# --- keypairs ---------------------------------------------------------------------------------


def test_dev_key_is_pinned() -> None:
    alice = Keypair.dev("alice")
    assert address_to_str(alice.address) == ALICE_ADDRESS_HEX
    assert alice.seed == hashlib.sha256(b"deltachain/dev-key/alice").digest()
    assert Keypair.dev("alice") == alice
    assert Keypair.dev("Alice") == alice  # documented: names are case-insensitive
    assert Keypair.dev("bob") != alice
    assert Keypair.dev("bob").address != alice.address


@pytest.mark.parametrize("name", ["alice", "bob"])
def test_repr_never_contains_the_seed(name: str) -> None:
    keypair = Keypair.dev(name)
    seed_hex = keypair.seed.hex()
    for text in (repr(keypair), str(keypair), f"{keypair}", f"{keypair!r}", repr([keypair])):
        assert seed_hex not in text
        assert seed_hex.upper() not in text
        assert str(keypair.seed) not in text
        assert address_to_str(keypair.address) in text


def test_keypair_equality_and_hash() -> None:
    seed, _, _, _ = unhex(RFC8032_TEST_1)
    assert Keypair(seed) == Keypair(seed)
    assert hash(Keypair(seed)) == hash(Keypair(seed))
    assert Keypair(seed) != Keypair.dev("alice")
    assert Keypair(seed) != seed


def test_generated_keys_differ_and_sign() -> None:
    a, b = Keypair.generate(), Keypair.generate()
    assert a.address != b.address
    assert len(a.seed) == 32
    signature = a.sign(b"hello")
    a.public_key.verify(b"hello", signature)
    with pytest.raises(BadSignature):
        b.public_key.verify(b"hello", signature)


# --- hashing (brief §10) ----------------------------------------------------------------------

PREFIXES = {name: value for name, value in vars(hashing).items() if name.startswith("PREFIX_")}


def test_sha256_known_answer() -> None:
    assert sha256(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_prefixes_are_distinct_single_bytes() -> None:
    assert len(PREFIXES) >= 10
    assert all(isinstance(p, bytes) and len(p) == 1 for p in PREFIXES.values())
    assert len(set(PREFIXES.values())) == len(PREFIXES)


def test_tagged_hash_is_sha256_of_prefix_and_parts() -> None:
    a, b = b"left" * 8, b"right" * 8
    assert tagged_hash(hashing.PREFIX_TRIE_NODE, a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert tagged_hash(hashing.PREFIX_HEADER) == hashlib.sha256(b"\x06").digest()


def test_tagged_hash_kinds_never_collide() -> None:
    payload = sha256(b"same payload") + sha256(b"same payload")
    digests = {tagged_hash(prefix, payload) for prefix in PREFIXES.values()}
    assert len(digests) == len(PREFIXES)
    assert sha256(payload) not in digests  # an unprefixed hash is not any kind either


@pytest.mark.parametrize("data", [b"", b"\x00" * 31, b"\x00" * 33, "00" * 32, bytearray(32)])
def test_as_hash32_rejects_wrong_length(data: object) -> None:
    with pytest.raises(DecodeError):
        as_hash32(data)  # type: ignore[arg-type]
    assert as_hash32(b"\x07" * 32) == b"\x07" * 32
