"""certpilot.domain.revocation: CRL parsing, signature trust, the ``revoked`` decision, staleness.

Real CRLs signed with cryptography's ``CertificateRevocationListBuilder`` by a
:class:`certpilot.localca.LocalCA`; the leaves carry a CRL distribution point, so they are built
here (``LocalCA.issue`` adds none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certpilot.domain.model import Observation
from certpilot.domain.problems import Problem, ProblemCode
from certpilot.domain.revocation import (
    CRLInfo,
    CRLParseError,
    RevocationMemo,
    assess,
    check,
    covers,
    crl_urls,
    issuer_of,
    parse_crl,
    stale,
    verify_crl,
)
from certpilot.domain.x509 import cert_info
from certpilot.localca import LocalCA, PrivateKey, new_key

URL = "http://crl.test.internal/intermediate.crl"
OTHER_URL = "http://crl.test.internal/other.crl"

Revoked = tuple[int, x509.ReasonFlags | None]


def make_leaf(
    ca: LocalCA,
    now: datetime,
    urls: Sequence[str] = (URL,),
    *,
    serial: int | None = None,
    name: str = "www.test.internal",
) -> x509.Certificate:
    """A server certificate from ``ca``'s issuing CA with a CRL distribution point."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.issuer_cert.subject)
        .public_key(new_key().public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.issuer_key.public_key()),
            critical=False,
        )
    )
    if urls:
        builder = builder.add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        [x509.UniformResourceIdentifier(u) for u in urls], None, None, None
                    )
                ]
            ),
            critical=False,
        )
    return builder.sign(ca.issuer_key, hashes.SHA256())


def make_crl(
    ca: LocalCA,
    now: datetime,
    revoked: Sequence[Revoked] = (),
    *,
    next_update: datetime | None = None,
    signer: PrivateKey | None = None,
    issuer_name: x509.Name | None = None,
    aki_key: PrivateKey | None = None,
    extensions: Sequence[x509.ExtensionType] = (),
) -> x509.CertificateRevocationList:
    """A CRL for ``ca``'s issuing CA; the keyword arguments forge or bend it."""
    signer = signer or ca.issuer_key
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_name or ca.issuer_cert.subject)
        .last_update(now - timedelta(minutes=10))
        .next_update(next_update or now + timedelta(days=1))
        .add_extension(x509.CRLNumber(7), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key((aki_key or signer).public_key()),
            critical=False,
        )
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=isinstance(ext, x509.DeltaCRLIndicator))
    for serial, reason in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - timedelta(minutes=30))
        )
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(signer, hashes.SHA256())


def der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


def observe(
    leaf: x509.Certificate,
    ca: LocalCA,
    now: datetime,
    *,
    chain: Sequence[x509.Certificate] | None = None,
    path: Sequence[x509.Certificate] | None = None,
) -> Observation:
    """A served leaf: the chain it was sent with and the path a trust walk built."""
    sent = [leaf, *([ca.issuer_cert] if chain is None else chain)]
    walked = [leaf, ca.issuer_cert, ca.root] if path is None else [leaf, *path]
    return Observation(
        source="tls",
        ref="tls://www.test.internal:443#www.test.internal",
        target="www.test.internal:443",
        observed_at=now,
        leaf=cert_info(leaf),
        chain=tuple(cert_info(c) for c in sent),
        path=tuple(cert_info(c) for c in walked),
        trusted=True,
    )


def crls(*items: CRLInfo) -> dict[str, CRLInfo]:
    return {c.url: c for c in items}


# ---------------------------------------------------------------------------------------------
# parse_crl


def test_parse_reads_issuer_dates_serials_and_reasons(ca: LocalCA, now: datetime) -> None:
    crl = make_crl(ca, now, [(0xABC, x509.ReasonFlags.key_compromise), (0x1F, None)])
    info = parse_crl(der(crl), URL)

    assert info.url == URL
    assert info.issuer == ca.issuer_cert.subject.rfc4514_string()
    ski = ca.issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert info.issuer_key_id == ski.digest.hex()
    assert info.this_update == now - timedelta(minutes=10)
    assert info.next_update == now + timedelta(days=1)
    assert info.revoked_serials == frozenset({"abc", "1f"})
    entry = info.entry("abc")
    assert entry is not None
    assert entry.reason == "key_compromise"
    assert entry.revoked_at == now - timedelta(minutes=30)
    # RFC 5280 section 5.3.1: no reason code extension means unspecified.
    assert info.entries["1f"].reason == "unspecified"
    assert info.crl_number == 7
    assert not info.verified
    assert not info.delta
    assert info.der == der(crl)
    assert info.size == len(info.der)


def test_pem_and_der_crls_parse_the_same(ca: LocalCA, now: datetime) -> None:
    crl = make_crl(ca, now, [(5, x509.ReasonFlags.superseded)])
    from_der = parse_crl(der(crl), URL)
    from_pem = parse_crl(crl.public_bytes(serialization.Encoding.PEM), URL)

    assert from_pem == from_der
    assert from_pem.der == from_der.der  # stored as DER either way
    assert from_pem.sha256 == from_der.sha256
    assert verify_crl(crl.public_bytes(serialization.Encoding.PEM), ca.issuer_cert)


@pytest.mark.parametrize(
    "data",
    [b"", b"not a crl", b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", b"\x30\x03"],
)
def test_garbage_is_a_parse_error_with_the_url(data: bytes) -> None:
    with pytest.raises(CRLParseError, match="not a CRL") as e:
        parse_crl(data, URL)
    assert e.value.url == URL
    assert str(e.value).startswith(URL)


def test_a_certificate_is_not_a_crl(ca: LocalCA) -> None:
    with pytest.raises(CRLParseError):
        parse_crl(ca.root_pem(), URL)


def test_delta_crl_remove_from_crl_entries_are_not_revocations(ca: LocalCA, now: datetime) -> None:
    crl = make_crl(
        ca,
        now,
        [(10, x509.ReasonFlags.certificate_hold), (11, x509.ReasonFlags.remove_from_crl)],
        extensions=[x509.DeltaCRLIndicator(6)],
    )
    info = parse_crl(der(crl), URL)
    assert info.delta
    assert info.revoked_serials == frozenset({"a"})
    assert info.entries["a"].reason == "certificate_hold"


def test_issuing_distribution_point_is_read(ca: LocalCA, now: datetime) -> None:
    idp = x509.IssuingDistributionPoint(
        full_name=[x509.UniformResourceIdentifier(URL)],
        relative_name=None,
        only_contains_user_certs=False,
        only_contains_ca_certs=True,
        only_some_reasons=None,
        indirect_crl=False,
        only_contains_attribute_certs=False,
    )
    info = parse_crl(der(make_crl(ca, now, extensions=[idp])), URL)
    assert info.idp_urls == (URL,)
    assert info.only_ca_certs
    assert not info.only_user_certs


# ---------------------------------------------------------------------------------------------
# verify_crl


def test_verify_accepts_the_issuer_in_every_form(ca: LocalCA, now: datetime) -> None:
    crl = make_crl(ca, now)
    info = parse_crl(der(crl), URL)
    assert verify_crl(der(crl), ca.issuer_cert)
    assert verify_crl(info, cert_info(ca.issuer_cert))
    # Not the root: it did not sign this CRL.
    assert not verify_crl(info, ca.root)


def test_verify_rejects_a_crl_signed_by_another_key(ca: LocalCA, now: datetime) -> None:
    forged = make_crl(ca, now, signer=new_key(), aki_key=ca.issuer_key)
    assert not verify_crl(der(forged), ca.issuer_cert)


def test_verify_rejects_aki_that_does_not_match_the_ski(ca: LocalCA, now: datetime) -> None:
    # Signed by the right key but naming another key id: a CRL for a re-keyed CA.
    odd = make_crl(ca, now, aki_key=new_key())
    assert not verify_crl(der(odd), ca.issuer_cert)


def test_verify_rejects_a_signer_without_crl_sign_key_usage(now: datetime) -> None:
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "No CRL Sign CA")])
    issuer = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(subject)
        .last_update(now)
        .next_update(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    assert crl.is_signature_valid(key.public_key())  # the signature alone is fine
    assert not verify_crl(der(crl), issuer)


def test_verify_never_raises(ca: LocalCA) -> None:
    assert not verify_crl(b"garbage", ca.issuer_cert)
    assert not verify_crl(b"garbage", replace(cert_info(ca.issuer_cert), der=b""))


# ---------------------------------------------------------------------------------------------
# check


def test_revoked_serial_adds_a_revoked_problem_naming_url_date_and_reason(
    ca: LocalCA, now: datetime
) -> None:
    leaf = make_leaf(ca, now)
    crl = parse_crl(
        der(make_crl(ca, now, [(leaf.serial_number, x509.ReasonFlags.key_compromise)])), URL
    )
    obs = observe(leaf, ca, now)

    out = check(obs, crls(crl), now)

    assert out.codes == (ProblemCode.REVOKED,)
    message = out.problems[0].message
    assert URL in message
    assert "key_compromise" in message
    serial = format(leaf.serial_number, "x")
    assert serial in message
    revoked_at = (now - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert revoked_at in message
    assert "stale" not in message
    assert out.leaf == obs.leaf
    assert out.chain == obs.chain


def test_existing_problems_are_kept_and_revoked_is_added_once(ca: LocalCA, now: datetime) -> None:
    leaf = make_leaf(ca, now)
    crl = parse_crl(der(make_crl(ca, now, [(leaf.serial_number, None)])), URL)
    obs = replace(observe(leaf, ca, now), problems=(Problem(ProblemCode.EXPIRING, "expires soon"),))
    once = check(obs, crls(crl), now)
    assert once.codes == (ProblemCode.EXPIRING, ProblemCode.REVOKED)
    assert "reason unspecified" in once.problems[1].message
    assert check(once, crls(crl), now) is once


def test_not_revoked_returns_the_observation_unchanged(ca: LocalCA, now: datetime) -> None:
    leaf = make_leaf(ca, now)
    other = make_leaf(ca, now, name="other.test.internal")
    crl = parse_crl(der(make_crl(ca, now, [(other.serial_number, None)])), URL)
    obs = observe(leaf, ca, now)

    result = assess(obs, crls(crl), now)
    assert result.observation is obs
    assert result.checked == (URL,)
    assert result.entry is None
    assert not result.untrusted
    # and the other one is revoked by the same list
    assert check(observe(other, ca, now), crls(crl), now).codes == (ProblemCode.REVOKED,)


def test_crl_signed_by_another_ca_is_not_trusted(ca: LocalCA, now: datetime) -> None:
    leaf = make_leaf(ca, now)
    mallory = LocalCA("Mallory", now)
    # Same issuer name and key id as the real CA, listing our serial, signed by Mallory.
    forged = make_crl(
        ca,
        now,
        [(leaf.serial_number, x509.ReasonFlags.key_compromise)],
        signer=mallory.issuer_key,
        aki_key=ca.issuer_key,
    )
    info = parse_crl(der(forged), URL)
    obs = observe(leaf, ca, now)

    result = assess(obs, crls(info), now)
    assert result.observation is obs
    assert result.untrusted == (URL,)
    assert check(obs, crls(info), now) is obs


def test_crl_of_another_issuer_listing_the_same_serial_is_ignored(
    ca: LocalCA, now: datetime
) -> None:
    serial = 0x1234567890ABCDEF
    leaf = make_leaf(ca, now, serial=serial)
    other = LocalCA("Other", now)
    their_crl = parse_crl(der(make_crl(other, now, [(serial, None)])), URL)
    assert not covers(their_crl, cert_info(leaf))
    obs = observe(leaf, ca, now)
    result = assess(obs, crls(their_crl), now)
    assert result.observation is obs
    assert not result.untrusted  # not even considered: it is not this issuer's list


def test_crl_with_the_issuer_name_but_another_key_id_is_ignored(ca: LocalCA, now: datetime) -> None:
    leaf = make_leaf(ca, now)
    rekeyed = new_key()
    crl = parse_crl(der(make_crl(ca, now, [(leaf.serial_number, None)], signer=rekeyed)), URL)
    assert crl.issuer == cert_info(leaf).issuer
    assert not covers(crl, cert_info(leaf))
    assert check(observe(leaf, ca, now), crls(crl), now).healthy


def test_only_the_leafs_own_distribution_points_count(ca: LocalCA, now: datetime) -> None:
    leaf = make_leaf(ca, now, urls=[URL])
    listed = parse_crl(der(make_crl(ca, now, [(leaf.serial_number, None)])), OTHER_URL)
    obs = observe(leaf, ca, now)
    assert check(obs, crls(listed), now) is obs


def test_second_distribution_point_is_used(ca: LocalCA, now: datetime) -> None:
    leaf = make_leaf(ca, now, urls=[URL, OTHER_URL])
    listed = parse_crl(der(make_crl(ca, now, [(leaf.serial_number, None)])), OTHER_URL)
    out = check(observe(leaf, ca, now), crls(listed), now)
    assert out.codes == (ProblemCode.REVOKED,)
    assert OTHER_URL in out.problems[0].message


def test_leaf_without_distribution_point_or_crl_is_unchanged(ca: LocalCA, now: datetime) -> None:
    leaf = make_leaf(ca, now, urls=())
    obs = observe(leaf, ca, now)
    crl = parse_crl(der(make_crl(ca, now, [(leaf.serial_number, None)])), URL)
    assert check(obs, crls(crl), now) is obs
    with_cdp = observe(make_leaf(ca, now), ca, now)
    assert check(with_cdp, {}, now) is with_cdp
    no_leaf = replace(obs, leaf=None)
    assert check(no_leaf, crls(crl), now) is no_leaf


def test_without_an_issuer_certificate_nothing_is_decided(ca: LocalCA, now: datetime) -> None:
    leaf = make_leaf(ca, now)
    crl = parse_crl(der(make_crl(ca, now, [(leaf.serial_number, None)])), URL)
    alone = observe(leaf, ca, now, chain=[], path=[])
    result = assess(alone, crls(crl), now)
    assert result.observation is alone
    assert result.no_issuer
    assert issuer_of(alone) is None


def test_issuer_found_in_the_validated_path_when_the_chain_lacks_it(
    now: datetime,
) -> None:
    rooted = LocalCA("RootOnly", now, intermediate_lifetime=None)
    leaf = make_leaf(rooted, now)
    crl = parse_crl(der(make_crl(rooted, now, [(leaf.serial_number, None)])), URL)
    # A server that sends only its leaf; the walk found the root in the trust store.
    obs = observe(leaf, rooted, now, chain=[], path=[rooted.root])
    found = issuer_of(obs)
    assert found is not None
    assert found.cert == rooted.root
    assert check(obs, crls(crl), now).codes == (ProblemCode.REVOKED,)


def test_a_forged_issuer_in_the_chain_cannot_vouch_for_a_crl(ca: LocalCA, now: datetime) -> None:
    """A peer sends a fake 'intermediate' (same name, its own key) and a CRL signed by it: the
    fake does not verify the leaf, so its CRL is worth nothing."""
    leaf = make_leaf(ca, now)
    fake_key = new_key()
    fake = (
        x509.CertificateBuilder()
        .subject_name(ca.issuer_cert.subject)
        .issuer_name(ca.root.subject)
        .public_key(fake_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(fake_key, hashes.SHA256())
    )
    crl = parse_crl(
        der(
            make_crl(ca, now, [(leaf.serial_number, None)], signer=fake_key, aki_key=ca.issuer_key)
        ),
        URL,
    )
    obs = observe(leaf, ca, now, chain=[fake], path=[])
    assert issuer_of(obs) is None
    assert check(obs, crls(crl), now) is obs


def test_idp_scope_excludes_end_entity_certificates(ca: LocalCA, now: datetime) -> None:
    leaf = make_leaf(ca, now)
    ca_only = x509.IssuingDistributionPoint(
        full_name=None,
        relative_name=None,
        only_contains_user_certs=False,
        only_contains_ca_certs=True,
        only_some_reasons=None,
        indirect_crl=False,
        only_contains_attribute_certs=False,
    )
    crl = parse_crl(der(make_crl(ca, now, [(leaf.serial_number, None)], extensions=[ca_only])), URL)
    assert not covers(crl, cert_info(leaf))
    assert check(observe(leaf, ca, now), crls(crl), now).healthy


def test_idp_partition_must_be_one_the_leaf_names(ca: LocalCA, now: datetime) -> None:
    leaf = make_leaf(ca, now)

    def partition(url: str) -> CRLInfo:
        idp = x509.IssuingDistributionPoint(
            full_name=[x509.UniformResourceIdentifier(url)],
            relative_name=None,
            only_contains_user_certs=True,
            only_contains_ca_certs=False,
            only_some_reasons=None,
            indirect_crl=False,
            only_contains_attribute_certs=False,
        )
        return parse_crl(
            der(make_crl(ca, now, [(leaf.serial_number, None)], extensions=[idp])), URL
        )

    assert check(observe(leaf, ca, now), crls(partition(URL)), now).codes == (ProblemCode.REVOKED,)
    assert check(observe(leaf, ca, now), crls(partition(OTHER_URL)), now).healthy


def test_stale_crl_still_revokes_and_says_so(ca: LocalCA, now: datetime) -> None:
    leaf = make_leaf(ca, now)
    crl = parse_crl(der(make_crl(ca, now, [(leaf.serial_number, None)])), URL)
    later = now + timedelta(days=2)
    out = check(observe(leaf, ca, now), crls(crl), later)
    assert out.codes == (ProblemCode.REVOKED,)
    assert "CRL stale since" in out.problems[0].message


def test_memo_gives_the_same_answers(ca: LocalCA, now: datetime) -> None:
    memo = RevocationMemo(size=2)
    revoked_leaf = make_leaf(ca, now)
    good_leaf = make_leaf(ca, now)
    crl = parse_crl(der(make_crl(ca, now, [(revoked_leaf.serial_number, None)])), URL)
    for _ in range(3):
        assert check(observe(revoked_leaf, ca, now), crls(crl), now, memo=memo).codes == (
            ProblemCode.REVOKED,
        )
        assert check(observe(good_leaf, ca, now), crls(crl), now, memo=memo).healthy
    forged = parse_crl(
        der(
            make_crl(
                ca, now, [(good_leaf.serial_number, None)], signer=new_key(), aki_key=ca.issuer_key
            )
        ),
        URL,
    )
    assert assess(observe(good_leaf, ca, now), crls(forged), now, memo=memo).untrusted == (URL,)


# ---------------------------------------------------------------------------------------------
# stale, crl_urls


def test_stale_once_next_update_has_passed(ca: LocalCA, now: datetime) -> None:
    crl = parse_crl(der(make_crl(ca, now, next_update=now + timedelta(hours=1))), URL)
    assert not stale(crl, now)
    assert not stale(crl, now + timedelta(minutes=59))
    assert stale(crl, now + timedelta(hours=1))
    assert stale(crl, now + timedelta(days=3))


def test_without_next_update_stale_only_by_max_age(ca: LocalCA, now: datetime) -> None:
    crl = replace(parse_crl(der(make_crl(ca, now)), URL), next_update=None)
    much_later = now + timedelta(days=30)
    assert not stale(crl, much_later)
    assert not stale(crl, now, max_age=timedelta(hours=24))
    assert stale(crl, now + timedelta(hours=24), max_age=timedelta(hours=24))


def test_crl_urls_are_distinct_in_order(ca: LocalCA, now: datetime) -> None:
    a = observe(make_leaf(ca, now, urls=[URL, OTHER_URL]), ca, now)
    b = observe(make_leaf(ca, now, urls=[OTHER_URL]), ca, now)
    c = replace(a, leaf=None)
    assert crl_urls([a, b, c]) == [URL, OTHER_URL]
