"""Published test vectors, reproduced byte for byte.

Sources (values copied from the published texts, not generated here):
* RFC 7634 Appendix A: ESP example with ChaCha20-Poly1305.
* draft-mcgrew-gcm-test-01 (the ESP test cases for RFC 4106 AES-GCM), section "AES-GCM",
  test cases 1-14 in order of appearance.
* RFC 3602 section 4, Cases #5-#8: ESP packets with AES-CBC (the RFC's packets carry no ICV, so
  the packet without our ICV is compared).
* RFC 4868 section 2.7.2 (AUTH256-1, AUTH384-1, AUTH512-1) and RFC 2202 section 3 test case 5
  (HMAC-SHA-1-96, used by RFC 2404) for the truncated HMAC ICVs.
"""
from __future__ import annotations

import pytest

from esp import (
    Direction,
    DropReason,
    EncrTransform,
    EspCipher,
    EspError,
    EspSA,
    IntegTransform,
    decapsulate,
    esp_open,
    esp_seal,
    parse_trailer,
)


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# -- RFC 7634 Appendix A ---------------------------------------------------------------------
RFC7634_KEYMAT = h(
    """80 81 82 83 84 85 86 87 88 89 8a 8b 8c 8d 8e 8f
       90 91 92 93 94 95 96 97 98 99 9a 9b 9c 9d 9e 9f
       a0 a1 a2 a3"""
)
RFC7634_SPI = 0x01020304
RFC7634_SEQ = 5
RFC7634_IV = h("10 11 12 13 14 15 16 17")
RFC7634_PLAINTEXT = h(
    """45 00 00 54 a6 f2 00 00 40 01 e7 78 c6 33 64 05
       c0 00 02 05 08 00 5b 7a 3a 08 00 00 55 3b ec 10
       00 07 36 27 08 09 0a 0b 0c 0d 0e 0f 10 11 12 13
       14 15 16 17 18 19 1a 1b 1c 1d 1e 1f 20 21 22 23
       24 25 26 27 28 29 2a 2b 2c 2d 2e 2f 30 31 32 33
       34 35 36 37 01 02 02 04"""
)
RFC7634_CIPHERTEXT_TAG = h(
    """24 03 94 28 b9 7f 41 7e 3c 13 75 3a 4f 05 08 7b
       67 c3 52 e6 a7 fa b1 b9 82 d4 66 ef 40 7a e5 c6
       14 ee 80 99 d5 28 44 eb 61 aa 95 df ab 4c 02 f7
       2a a7 1e 7c 4c 4f 64 c9 be fe 2f ac c6 38 e8 f3
       cb ec 16 3f ac 46 9b 50 27 73 f6 fb 94 e6 64 da
       91 65 b8 28 29 f6 41 e0
       76 aa a8 26 6b 7f b0 f7 b1 1b 36 99 07 e1 ad 43"""
)


def test_rfc7634_appendix_a_esp_packet_byte_for_byte() -> None:
    cipher = EspCipher(EncrTransform.CHACHA20_POLY1305, 256, None, RFC7634_KEYMAT)
    inner = RFC7634_PLAINTEXT[:-4]  # the 84-byte ICMP echo request (IPv4 total length 0x54)
    assert len(inner) == 0x54
    packet = esp_seal(cipher, RFC7634_SPI, RFC7634_SEQ, RFC7634_IV, inner, 4)
    expected = h("01 02 03 04 00 00 00 05") + RFC7634_IV + RFC7634_CIPHERTEXT_TAG
    assert packet == expected
    assert esp_open(cipher, expected, RFC7634_SEQ) == RFC7634_PLAINTEXT

    sa_in = EspSA(Direction.IN, RFC7634_SPI,
                  EspCipher(EncrTransform.CHACHA20_POLY1305, 256, None, RFC7634_KEYMAT))
    assert decapsulate(sa_in, expected) == (4, inner)


# -- draft-mcgrew-gcm-test-01, AES-GCM test cases ---------------------------------------------
# (key, spi, seq (8 hex digits, or 16 with ESN), nonce = salt | IV, plaintext, ESP packet)
GCM_CASES = [
    (  # 1
        "4c80cdefbb5d10da906ac73c3613a634", "00004321", "8765432100000000",
        "2e443b684956ed7e3b244cfe",
        """45000048699a000080114db7c0a80102 c0a801010a9bf15638d3010000010000
           00000000045f736970045f7564700373 69700963796265726369747902646b00
           0021000101020201""",
        """00004321000000004956ed7e3b244cfe fecf537e729d5b07dc30df528dd22b76
           8d1b98736696a6fd348509fa13ceac34 cfa2436f14a3f3cf65925bf1f4a13c5d
           15b21e1884f5ff6247aeabb786b93bce 61bc17d768fd9732459018148f6cbe72
           2fd04796562dfdb4""",
    ),
    (  # 2
        "feffe9928665731c6d6a8f9467308308", "0000a5f8", "0000000a", "cafebabefacedbaddecaf888",
        """4500003e698f000080114dccc0a80102 c0a801010a980035002a2343b2d00100
           00010000000000000373697009637962 65726369747902646b00000100010001""",
        """0000a5f80000000afacedbaddecaf888 deb22cd9b07c72c16e3a65beeb8df304
           a5a5897d33ae530f1ba76d5d114d2a5c 3de81827c10e9a4f51330d0eec416642
           cfbb85a5b47e48a4ec3b9ba95d918bd1 83b70d3aa8bc6ee4c309e9d85a41ad4a""",
    ),
    (  # 3
        "abbccddef00112233445566778899aababbccddef00112233445566778899aab", "4a2cbfe3",
        "00000002", "112233440102030405060708",
        """4500003069a6400080062690c0a80102 9389155e0a9e008b2dc57ee000000000
           7002400020bf0000020405b401010402 01020201""",
        """4a2cbfe3000000020102030405060708 ff425c9b724599df7a3bcd510194e00d
           6a78107f1b0b1cbf06efae9d65a5d763 748a637985771d347f0545659f14e99d
           ef842d8eb335f4eecfdbf831824b4c49 15956c96""",
    ),
    (  # 4
        "00000000000000000000000000000000", "00000000", "00000001", "000000000000000000000000",
        """4500003c99c500008001cb7a40679318 010101010800075c0200440061626364
           65666768696a6b6c6d6e6f7071727374 75767761626364656667686901020201""",
        """00000000000000010000000000000000 4688daf2f973a392732909c331d56d60
           f694abaa414b5e7ff5fdcdfff5e9a284 456476492719ffb64de7d9dca1e1d894
           bc3bd57873ed4d181d19d4d5c8c18af3 f821d496eeb096e98ad2b69e4799c71d""",
    ),
    (  # 5
        "3de09874b388e6491988d0c3607eae1f", "42f67e3f", "1010101010101010",
        "57690e434e280000a2fca1a3",
        """4500003c99c300008001cb7c40679318 010101010800085c0200430061626364
           65666768696a6b6c6d6e6f7071727374 75767761626364656667686901020201""",
        """42f67e3f101010104e280000a2fca1a3 fba2caa4853cf9f0f22cb10d86dd83b0
           fec75691cf1a04b00d1138ec9c357917 65acbd8701ad79845bf9fe3fba487bc9
           1755e6662b4c8d0d1f5e22739530320a e0d731cc978ecafaeae88f00e80d6e48""",
    ),
    (  # 6
        "3de09874b388e6491988d0c3607eae1f", "42f67e3f", "1010101010101010",
        "57690e434e280000a2fca1a3",
        """4500001c42a200008001441f406793b6 e00000020a00f5ff01020201""",
        """42f67e3f101010104e280000a2fca1a3 fba2ca845e5df9f0f22c3e6e86dd831e
           1fc65792cd1af9130e1379ed369f071f 35e034be95f112e4e7d05d35""",
    ),
    (  # 7
        "feffe9928665731c6d6a8f9467308308feffe9928665731c", "0000a5f8", "0000000a",
        "cafebabefacedbaddecaf888",
        """45000028a4ad4000400678800a01038f 0a010612802306b8cb712602dd6bb03e
           501016d075680001""",
        """0000a5f80000000afacedbaddecaf888 a5b1f8066029aea40e598b8122de0242
           0938b3ab33f828e687b8858b5bfbdbd0 315b27452144cc7795457b9652037f53
           18027b5b4cd7a636""",
    ),
    (  # 8
        "abbccddef00112233445566778899aab", "00000100", "0000000000000001",
        "decaf888cafedebaceface74",
        """4500004933ba00007f119106c3fb1d10 c2b1d326c02831ce0035dd7b800302d5
           00004e20001e8c18d75b81dc91baa047 6b91b924b280389d92c963bac046ec95
           9b6266c04722b14923010101""",
        """0000010000000001cafedebaceface74 18a6fd42f72cbf4ab2a2ea901f73d814
           e3e7f243d95412e1c349c1d2fbec168f 9190feebaf2cb01984e65863965d7472
           b79da345e0e780191f0d2f0e0f496c22 6f2127b27db35724e7845d68651f57e6
           5f354f75ff17015769623436""",
    ),
    (  # 9
        "abbccddef00112233445566778899aababbccddef00112233445566778899aab", "17405e67",
        "156f3126dd0db99b", "73616c74616e640169766563",
        """45080028732c00004006e9f90a010612 0a01038f06b88023dd6bafbecb712602
           50101f646d540001""",
        """17405e67dd0db99b616e640169766563 f2d69ecdbd5a0d5b8d5ef38bad4da58d
           1f278fde98ef67549d524a3018d9a57f f4d3a31ce673119e451626c2415771e3
           b7eebca614c89b35""",
    ),
    (  # 10
        "3de09874b388e6491988d0c3607eae1f", "42f67e3f", "1010101010101010",
        "57690e434e280000a2fca1a3",
        """45000049333e00007f119182c3fb1d10 c2b1d326c02831ce0035cb458003025b
           000001e0001e8c18d65759d52284a035 2c71475c8880391c764d6e5ee0496b32
           5ae270c03899493915010101""",
        """42f67e3f101010104e280000a2fca1a3 fba2cad12fc1f9f00d3cebf305410db8
           3d7784b607323d220f24b0a97d541828 00cadb0f68d99ef0e0c0c89ae9bea888
           4e52d65bc1afd0740f742444747b5b39 ab533163aad4550ee5160975cdb608c5
           769189609763b8e18caa81e2""",
    ),
    (  # 11
        "abbccddef00112233445566778899aababbccddef00112233445566778899aab", "17405e67",
        "156f3126dd0db99b", "73616c74616e640169766563",
        """636973636f0172756c65730174686501 6e6574776501646566696e6501746865
           746563686e6f6c6f6769657301746861 7477696c6c01646566696e65746f6d6f
           72726f7701020201""",
        """17405e67dd0db99b616e640169766563 d4b7ed86a1777f2ea13d6973d324c69e
           7b43f826fb56831226508bebd2dceb18 d0a6df10e5487df074113e14c641024e
           3e6773d91a62ee429b043a10e3efe6b0 12a49363412364f8c0cac587f249e56b
           11e24f30e44ccc76""",
    ),
    (  # 12
        "7d773d00c144c525ac619d18c84a3f47", "335467ae", "ffffffff", "d966426743457e9182443bc6",
        "01020201",
        """335467aeffffffff43457e9182443bc6 437f866bcb3f699fe9b0822bac961c45
           04bef270""",
    ),
    (  # 13
        "abbccddef00112233445566778899aab", "00000100", "0000000000000001",
        "decaf888cafedebaceface74",
        """746f016265016f72016e6f7401746f01 62650001""",
        """0000010000000001cafedebaceface74 29c9fc69a197d038ccdd14e2ddfcaa05
           43332164412503524303ed3c6c5f2838 43af8c3e""",
    ),
    (  # 14
        "6c6567616c697a656d6172696a75616e61616e64646f69746265666f72656961", "796b6963",
        "ffffffffffffffff", "7475726e333021696765746d",
        """45000030da3a00008001df3bc0a80005 c0a800010800c6cd0200070061626364
           65666768696a6b6c6d6e6f7071727374 01020201""",
        """796b6963ffffffff333021696765746d f97ab2aa356d8edce17644ac8c78e25d
           d24dedbb29ebf1b64a274b39b49c3a86 4cd3d78ca4ae68a32b42458fb57dbe82
           1dcc63b9d0937ba2945f669368661a32 9fb4c053""",
    ),
]


@pytest.mark.parametrize("case", GCM_CASES, ids=[f"case{i}" for i in range(1, 15)])
def test_mcgrew_gcm_esp_vectors(case: tuple[str, ...]) -> None:
    key_hex, spi_hex, seq_hex, nonce_hex, plaintext_hex, packet_hex = case
    key, nonce, plaintext, packet = h(key_hex), h(nonce_hex), h(plaintext_hex), h(packet_hex)
    esn = len(seq_hex) == 16
    seq = int(seq_hex, 16)
    cipher = EspCipher(EncrTransform.AES_GCM_16, len(key) * 8, None, key + nonce[:4])
    next_header, payload = parse_trailer(plaintext)
    assert esp_seal(cipher, int(spi_hex, 16), seq, nonce[4:], payload, next_header, esn=esn) == packet
    assert esp_open(cipher, packet, seq, esn=esn) == plaintext
    # The AAD covers the ESN high bits: a wrong guess does not verify.
    if esn:
        with pytest.raises(EspError) as err:
            esp_open(cipher, packet, seq ^ (1 << 32), esn=True)
        assert err.value.reason is DropReason.AUTH_FAILED


# -- RFC 3602 section 4, Cases #5-#8 -------------------------------------------------------------
RFC3602_KEY_56 = h("90d382b410eeba7ad938c46cec1a82bf")
RFC3602_KEY_78 = h("0123456789abcdef0123456789abcdef")
# (key, spi, seq, iv, next header, payload, ESP packet without ICV)
RFC3602_CASES = [
    (  # Case #5: transport mode, ICMP echo request (64 bytes)
        RFC3602_KEY_56, 0x4321, 1, "e96e8c08ab465763fd098d45dd3ff893", 1,
        """08000ebda70a00008e9c083db95b0700 08090a0b0c0d0e0f1011121314151617
           18191a1b1c1d1e1f2021222324252627 28292a2b2c2d2e2f3031323334353637""",
        """0000432100000001e96e8c08ab465763 fd098d45dd3ff893f663c25d325c18c6
           a9453e194e120849a4870b66cc6b9965 330013b4898dc856a4699e523a55db08
           0b59ec3a8e4b7e52775b07d1db34ed9c 538ab50c551b874aa269add047ad2d59
           13ac19b7cfbad4a6""",
    ),
    (  # Case #6: transport mode, ICMP echo request (28 bytes)
        RFC3602_KEY_56, 0x4321, 8, "69d08df7d203329db093fc4924e5bd80", 1,
        "0800b5e8a80a0500a69c083d0b660e00 777777777777777777777777",
        """000043210000000869d08df7d203329d b093fc4924e5bd80f51995881ec4e0c4
           488987ce742e8109689bb379d2d750c0 d915dca346a89f75""",
    ),
    (  # Case #7: tunnel mode, IPv4 ICMP echo request (84 bytes)
        RFC3602_KEY_78, 0x8765, 2, "f4e765244f6407adf13dc1380f673f37", 4,
        """45000054090400004001f988c0a87b03 c0a87bc808009f76a90a0100b49c083d
           02a2040008090a0b0c0d0e0f10111213 1415161718191a1b1c1d1e1f20212223
           2425262728292a2b2c2d2e2f30313233 34353637""",
        """0000876500000002f4e765244f6407ad f13dc1380f673f37773b5241a4c44922
           5e4f3ce5ed611b0c237ca96cf74a9301 3c1b0ea1a0cf70f8e4ecaec78ac53aad
           7a0f022b859243c647752e94a859352b 8a4d4d2decd136e5c177f132ad3fbfb2
           201ac9904c74ee0a109e0ca1e4dfe9d5 a100b842f1c22f0d""",
    ),
    (  # Case #8: tunnel mode, IPv4 ICMP echo request (68 bytes)
        RFC3602_KEY_78, 0x8765, 5, "85d47224b5f3dd5d2101d4ea8dffab22", 4,
        """45000044090c00004001f990c0a87b03 c0a87bc80800d63caa0a0200c69c083d
           a3de0300ffffffffffffffffffffffff ffffffffffffffffffffffffffffffff
           ffffffff""",
        """000087650000000585d47224b5f3dd5d 2101d4ea8dffab2215b92683819596a8
           047232cc00f7048fe45318e11f8a0f62 ede3c3fc61203bb50f980a08c9843fd3
           a1b06d5c07ff9639b7eb7dfb3512e5de 435e7207ed971ef3d2726d9b5ef6affc
           6d17a0decbb13892""",
    ),
]


@pytest.mark.parametrize("case", RFC3602_CASES, ids=["case5", "case6", "case7", "case8"])
def test_rfc3602_esp_packets(case: tuple) -> None:  # type: ignore[type-arg]
    key, spi, seq, iv_hex, next_header, payload_hex, packet_hex = case
    iv, payload, rfc_packet = h(iv_hex), h(payload_hex), h(packet_hex)
    integ_key = bytes(range(20))

    def cipher() -> EspCipher:
        return EspCipher(EncrTransform.AES_CBC, 128, IntegTransform.HMAC_SHA1_96, key, integ_key,
                         random_bytes=lambda n: iv)

    c = cipher()
    assert c.iv_for(seq) == iv
    packet = esp_seal(c, spi, seq, c.iv_for(seq), payload, next_header)
    # RFC 3602's packets are encryption-only: ours is the same bytes followed by the ICV.
    assert packet[: -c.icv_len] == rfc_packet
    assert packet[-c.icv_len :] == c.icv(rfc_packet)

    sa_in = EspSA(Direction.IN, spi, cipher(), allowed_next_headers=frozenset({next_header}))
    assert decapsulate(sa_in, packet) == (next_header, payload)


# -- truncated HMAC ICVs ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("integ", "key", "data", "icv"),
    [
        # RFC 4868 2.7.2.1 Test Case AUTH256-1: HMAC-SHA-256-128
        (IntegTransform.HMAC_SHA2_256_128, b"\x0b" * 32, b"Hi There",
         "198a607eb44bfbc69903a0f1cf2bbdc5"),
        # RFC 4868 2.7.2.2 Test Case AUTH384-1: HMAC-SHA-384-192
        (IntegTransform.HMAC_SHA2_384_192, b"\x0b" * 48, b"Hi There",
         "b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee973"),
        # RFC 4868 2.7.2.3 Test Case AUTH512-1: HMAC-SHA-512-256
        (IntegTransform.HMAC_SHA2_512_256, b"\x0b" * 64, b"Hi There",
         "637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8"),
        # RFC 4868 2.7.2.1 Test Case AUTH256-2
        (IntegTransform.HMAC_SHA2_256_128, b"Jefe" * 8, b"what do ya want for nothing?",
         "167f928588c5cc2eef8e3093caa0e87c"),
        # RFC 2202 section 3, test_case 5: HMAC-SHA-1 digest-96
        (IntegTransform.HMAC_SHA1_96, b"\x0c" * 20, b"Test With Truncation",
         "4c1a03424b55e07fe7f27be1"),
    ],
)
def test_truncated_hmac_icv(integ: IntegTransform, key: bytes, data: bytes, icv: str) -> None:
    cipher = EspCipher(EncrTransform.AES_CBC, 128, integ, bytes(16), key)
    assert cipher.icv(data) == h(icv)
    assert cipher.icv(data[:3], data[3:]) == h(icv)  # parts are concatenated
