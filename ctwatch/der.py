"""The few certificate fields a CT monitor needs, read straight from the DER.

A monitor reads every certificate in a log (billions) to find the names on it. Through
``cryptography`` that costs most of the monitor's time: ``cert.extensions`` turns every
extension into Python objects to hand back one SAN list, and ``cert.issuer.rfc4514_string()``
rebuilds Name objects on each call (about 22 µs of a ~45 µs parse, measured by
``benchmarks/ct_monitor.py --profile``). :func:`cert_fields` walks the certificate's DER just
far enough for the subject alternative DNS names, the subject common names and the issuer's
raw DER (an issuer string is then computed once per distinct issuer, see
:mod:`ctwatch.rfc6962`).

It is deliberately strict and small: definite-length DER, single-byte tags, the X.509 v3
layout (RFC 5280 section 4.1). Anything it does not expect (an unusual string type, a
non-ASCII DNS name, two SAN extensions, a long-form tag) makes it return ``None`` and the
caller uses ``cryptography``, so results never differ from the reference, only the time.
"""

from __future__ import annotations

from dataclasses import dataclass

_SEQUENCE = 0x30
_SET = 0x31
_INTEGER = 0x02
_OID = 0x06
_BOOLEAN = 0x01
_OCTET_STRING = 0x04
_VERSION = 0xA0  # [0] EXPLICIT Version
_EXTENSIONS = 0xA3  # [3] EXPLICIT Extensions
_DNS_NAME = 0x82  # GeneralName [2] IMPLICIT IA5String

_OID_CN = b"\x55\x04\x03"  # 2.5.4.3
_OID_SAN = b"\x55\x1d\x11"  # 2.5.29.17

# The string types nearly every CN is in, with their codecs; rarer ones (Teletex, BMP,
# Universal) go to cryptography, whose decoding of them is the reference.
_STRINGS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
}


class _Unexpected(Exception):
    """Not the DER this reader handles: fall back to cryptography."""


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """``(tag, content start, content end)`` of the element at ``pos`` (within ``end``)."""
    if pos + 2 > end:
        raise _Unexpected
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise _Unexpected  # multi-byte tag
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > end:
            raise _Unexpected  # indefinite length, or absurd
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    stop = pos + length
    if stop > end:
        raise _Unexpected
    return tag, pos, stop


def _expect(data: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    got, start, stop = _tlv(data, pos, end)
    if got != tag:
        raise _Unexpected
    return start, stop


@dataclass(frozen=True, slots=True)
class CertFields:
    issuer_der: bytes  # the issuer Name, as encoded (a cache key for its string form)
    dns_names: tuple[str, ...]  # SAN dNSName values, in order
    common_names: tuple[str, ...]  # subject CN values, in order


def _common_names(der: bytes, start: int, end: int) -> tuple[str, ...]:
    out: list[str] = []
    pos = start
    while pos < end:  # RDNSequence: SET OF AttributeTypeAndValue
        s_start, s_end = _expect(der, pos, end, _SET)
        pos = s_end
        q = s_start
        while q < s_end:
            a_start, a_end = _expect(der, q, s_end, _SEQUENCE)
            q = a_end
            o_start, o_end = _expect(der, a_start, a_end, _OID)
            if der[o_start:o_end] != _OID_CN:
                continue
            tag, v_start, v_end = _tlv(der, o_end, a_end)
            codec = _STRINGS.get(tag)
            if codec is None or v_end != a_end:
                raise _Unexpected
            try:
                out.append(der[v_start:v_end].decode(codec))
            except UnicodeDecodeError:
                raise _Unexpected from None
    return tuple(out)


def _dns_names(der: bytes, start: int, end: int) -> tuple[str, ...] | None:
    """The SAN dNSNames of the Extensions in ``[start, end)``; ``None`` without a SAN."""
    e_start, e_end = _expect(der, start, end, _SEQUENCE)
    if e_end != end:
        raise _Unexpected
    found: tuple[str, ...] | None = None
    pos = e_start
    while pos < e_end:
        x_start, x_end = _expect(der, pos, e_end, _SEQUENCE)
        pos = x_end
        o_start, o_end = _expect(der, x_start, x_end, _OID)
        if der[o_start:o_end] != _OID_SAN:
            continue
        if found is not None:
            raise _Unexpected  # a duplicate extension: cryptography refuses it
        q = o_end
        tag, c_start, c_end = _tlv(der, q, x_end)
        if tag == _BOOLEAN:
            tag, c_start, c_end = _tlv(der, c_end, x_end)
        if tag != _OCTET_STRING or c_end != x_end:
            raise _Unexpected
        g_start, g_end = _expect(der, c_start, c_end, _SEQUENCE)
        names: list[str] = []
        g = g_start
        while g < g_end:
            tag, n_start, n_end = _tlv(der, g, g_end)
            g = n_end
            if tag == _DNS_NAME:
                raw = der[n_start:n_end]
                if not raw.isascii():
                    raise _Unexpected
                names.append(raw.decode("ascii"))
        found = tuple(names)
    return found


def cert_fields(der: bytes) -> CertFields | None:
    """The issuer's DER, SAN DNS names and subject CNs of a DER certificate, or ``None`` when
    its encoding is not one this reader handles (then ask ``cryptography``)."""
    end = len(der)
    try:
        c_start, c_end = _expect(der, 0, end, _SEQUENCE)
        t_start, t_end = _expect(der, c_start, c_end, _SEQUENCE)  # TBSCertificate
        tag, start, stop = _tlv(der, t_start, t_end)
        if tag == _VERSION:
            tag, start, stop = _tlv(der, stop, t_end)
        if tag != _INTEGER:  # serialNumber
            raise _Unexpected
        _s, pos = _expect(der, stop, t_end, _SEQUENCE)  # signature AlgorithmIdentifier
        i_start = pos
        _i, pos = _expect(der, pos, t_end, _SEQUENCE)  # issuer
        issuer = der[i_start:pos]
        _v, pos = _expect(der, pos, t_end, _SEQUENCE)  # validity
        s_start, s_end = _expect(der, pos, t_end, _SEQUENCE)  # subject
        _k, pos = _expect(der, s_end, t_end, _SEQUENCE)  # subjectPublicKeyInfo
        dns: tuple[str, ...] = ()
        while pos < t_end:  # issuerUniqueID [1], subjectUniqueID [2], extensions [3]
            tag, start, stop = _tlv(der, pos, t_end)
            pos = stop
            if tag == _EXTENSIONS:
                dns = _dns_names(der, start, stop) or ()
        cns = _common_names(der, s_start, s_end)
    except _Unexpected:
        return None
    return CertFields(issuer, dns, cns)


__all__ = ["CertFields", "cert_fields"]
