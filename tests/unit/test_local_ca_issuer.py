"""The local CA issuer: persisted hierarchy, key types and validity, revocation published as a
CRL (RFC 5280 section 5), all on an injected clock."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certpilot.domain.clock import FixedClock
from certpilot.domain.errors import ConfigError
from certpilot.domain.remedy import IssueRequest, IssuerError, RevocationReason
from certpilot.localca import LocalCA
from remediator.issuers import ISSUER_KINDS, build_issuer
from remediator.issuers.local_ca import LocalCAConfig, LocalCAIssuer

NOW = datetime(2026, 5, 4, 10, 0, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


def make(tmp_path: Path, clock: FixedClock, **kw: object) -> LocalCAIssuer:
    cfg = LocalCAConfig(state_dir=tmp_path / "ca", **kw)  # type: ignore[arg-type]
    return LocalCAIssuer("internal", cfg, clock=clock)


def chain_of(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("key_type", "cls", "size"),
    [
        ("EC-256", ec.EllipticCurvePublicKey, 256),
        ("EC-384", ec.EllipticCurvePublicKey, 384),
        ("RSA-2048", rsa.RSAPublicKey, 2048),
        ("rsa-3072", rsa.RSAPublicKey, 3072),
    ],
)
async def test_issues_requested_key_type_and_validity(
    tmp_path: Path, clock: FixedClock, key_type: str, cls: type, size: int
) -> None:
    ca = make(tmp_path, clock)
    cert = await ca.issue(
        IssueRequest(names=("svc.internal", "10.0.0.7"), key_type=key_type, validity_days=30)
    )
    leaf, intermediate = chain_of(cert.chain_pem)
    assert isinstance(leaf.public_key(), cls)
    assert leaf.public_key().key_size == size  # type: ignore[union-attr]
    key = serialization.load_pem_private_key(cert.key_pem, password=None)
    assert key.public_key() == leaf.public_key()
    leaf.verify_directly_issued_by(intermediate)
    root = x509.load_pem_x509_certificate(ca.root_pem())
    intermediate.verify_directly_issued_by(root)
    assert cert.not_after == NOW - timedelta(minutes=5) + timedelta(days=30)
    assert cert.not_after == leaf.not_valid_after_utc
    assert cert.serial == format(leaf.serial_number, "x")
    assert cert.issuer_name == "internal"
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["svc.internal"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert "PRIVATE KEY" not in repr(cert)
    assert await ca.renewal_info(cert.chain_pem) is None


async def test_state_persists_across_instances_and_keys_are_0600(
    tmp_path: Path, clock: FixedClock
) -> None:
    first = make(tmp_path, clock)
    cert = await first.issue(IssueRequest(names=("a.internal",)))
    state = tmp_path / "ca"
    assert mode(state) == 0o700
    for key_file in ("root.key", "intermediate.key"):
        assert mode(state / key_file) == 0o600
    assert mode(state / "root.pem") == 0o644

    clock.advance(timedelta(days=3))
    second = make(tmp_path, clock)  # a restart: same hierarchy, same index
    assert second.root_pem() == first.root_pem()
    assert second.issuing_certificate() == first.issuing_certificate()
    assert second.issued_serials() == [cert.serial]
    again = await second.issue(IssueRequest(names=("b.internal",)))
    chain_of(again.chain_pem)[0].verify_directly_issued_by(first.issuing_certificate())
    assert sorted(second.issued_serials()) == sorted([cert.serial, again.serial])
    # A certificate from before the restart can still be revoked.
    await second.revoke(cert.chain_pem, RevocationReason.SUPERSEDED)
    assert second.revocations()[cert.serial].reason is RevocationReason.SUPERSEDED


async def test_revoke_publishes_crl_with_reason(tmp_path: Path, clock: FixedClock) -> None:
    crl_path = tmp_path / "public" / "internal.crl"
    ca = make(tmp_path, clock, crl_path=crl_path, crl_next_update_hours=6)
    # An empty CRL exists from the start, so relying parties can fetch one at once.
    empty = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert len(empty) == 0
    keep = await ca.issue(IssueRequest(names=("keep.internal",)))
    bad = await ca.issue(IssueRequest(names=("bad.internal",)))
    old = await ca.issue(IssueRequest(names=("old.internal",)))

    clock.advance(timedelta(hours=1))
    await ca.revoke(bad.chain_pem, RevocationReason.KEY_COMPROMISE)
    await ca.revoke(old.chain_pem, RevocationReason.UNSPECIFIED)

    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert crl.is_signature_valid(ca.issuing_certificate().public_key())  # type: ignore[arg-type]
    assert crl.issuer == ca.issuing_certificate().subject
    assert crl.last_update_utc == NOW + timedelta(hours=1)
    assert crl.next_update_utc == NOW + timedelta(hours=7)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number >= 3  # initial, then one per revocation
    entry = crl.get_revoked_certificate_by_serial_number(int(bad.serial, 16))
    assert entry is not None
    assert entry.revocation_date_utc == NOW + timedelta(hours=1)
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    plain = crl.get_revoked_certificate_by_serial_number(int(old.serial, 16))
    assert plain is not None
    # RFC 5280 section 5.3.1: no reasonCode extension for "unspecified".
    with pytest.raises(x509.ExtensionNotFound):
        plain.extensions.get_extension_for_class(x509.CRLReason)
    assert crl.get_revoked_certificate_by_serial_number(int(keep.serial, 16)) is None
    assert mode(crl_path) == 0o644

    # Idempotent: revoking again keeps the first record and reason.
    await ca.revoke(bad.chain_pem, RevocationReason.SUPERSEDED)
    assert ca.revocations()[bad.serial].reason is RevocationReason.KEY_COMPROMISE

    # Re-publishing later moves the update times and bumps the CRL number.
    clock.advance(timedelta(hours=5))
    await ca.publish_crl()
    later = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert later.next_update_utc == NOW + timedelta(hours=12)
    assert later.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > number
    assert len(later) == 2

    index = json.loads((tmp_path / "ca" / "index.json").read_text())
    assert set(index["revoked"]) == {bad.serial, old.serial}
    assert "PRIVATE" not in (tmp_path / "ca" / "index.json").read_text()


async def test_refuses_what_it_did_not_issue_and_bad_requests(
    tmp_path: Path, clock: FixedClock
) -> None:
    ca = make(tmp_path, clock, max_validity_days=100)
    stranger = LocalCA("Elsewhere", NOW).issue(["x.internal"], NOW)
    with pytest.raises(IssuerError, match="not issued by this CA"):
        await ca.revoke(stranger.chain_pem(), RevocationReason.KEY_COMPROMISE)
    with pytest.raises(IssuerError, match="cannot revoke: no PEM certificate"):
        await ca.revoke(b"garbage", RevocationReason.KEY_COMPROMISE)
    with pytest.raises(IssuerError, match=r"validity 200 days is outside 1\.\.100"):
        await ca.issue(IssueRequest(names=("x.internal",), validity_days=200))
    with pytest.raises(IssuerError, match="unsupported key type 'DSA-1024'"):
        await ca.issue(IssueRequest(names=("x.internal",), key_type="DSA-1024"))
    with pytest.raises(IssuerError, match="no names"):
        await ca.issue(IssueRequest(names=()))
    assert ca.issued_serials() == []


async def test_leaf_never_outlives_its_ca(tmp_path: Path, clock: FixedClock) -> None:
    ca = make(tmp_path, clock, ca_validity_days=30)
    cert = await ca.issue(IssueRequest(names=("short.internal",), validity_days=90))
    assert cert.not_after is not None
    assert cert.not_after <= ca.issuing_certificate().not_valid_after_utc


async def test_built_from_the_lookup_table(tmp_path: Path, clock: FixedClock) -> None:
    assert set(ISSUER_KINDS) >= {"acme", "local_ca"}
    issuer = build_issuer(
        "local_ca",
        "internal",
        {"state_dir": str(tmp_path / "ca"), "validity_days": 7, "intermediate": False},
        clock=clock,
    )
    assert isinstance(issuer, LocalCAIssuer)
    cert = await issuer.issue(IssueRequest(names=("t.internal",)))
    (_leaf, *rest) = chain_of(cert.chain_pem)
    assert rest == []  # no intermediate: signed by the root directly
    assert cert.not_after == NOW - timedelta(minutes=5) + timedelta(days=7)
    assert not (tmp_path / "ca" / "intermediate.key").exists()

    with pytest.raises(ConfigError) as err:
        build_issuer("local_ca", "internal", {"state_dir": 5}, clock=clock)
    assert str(err.value) == "issuers.internal: state_dir: a path (got 5)"
    with pytest.raises(ConfigError, match=r"issuers\.x: kind: one of acme, local_ca"):
        build_issuer("vault", "x", {}, clock=clock)
    with pytest.raises(ConfigError, match=r"issuers\.internal: colour: one of"):
        build_issuer("local_ca", "internal", {"state_dir": "/tmp/x", "colour": 1}, clock=clock)
    with pytest.raises(ConfigError, match="validity_days must be"):
        build_issuer(
            "local_ca", "internal", {"state_dir": str(tmp_path), "validity_days": 0}, clock=clock
        )
    with pytest.raises(ConfigError, match="dns_hook: a list of strings"):
        build_issuer(
            "acme",
            "le",
            {
                "directory_url": "https://acme.test/dir",
                "state_dir": str(tmp_path),
                "challenge": "dns-01",
                "dns_hook": "hook.sh --present",
            },
            clock=clock,
        )


def test_world_readable_key_is_tightened(tmp_path: Path, clock: FixedClock) -> None:
    make(tmp_path, clock)
    key = tmp_path / "ca" / "root.key"
    key.chmod(0o644)
    make(tmp_path, clock)
    assert mode(key) == 0o600


def _start_replica(state_dir: str, count: int) -> list[str]:
    """Body of one process: open the shared CA, issue ``count`` certificates, return serials
    and the root's fingerprint (first)."""
    clock = FixedClock(NOW)
    issuer = LocalCAIssuer("internal", LocalCAConfig(state_dir=Path(state_dir)), clock=clock)
    root = issuer.ca.root.fingerprint(issuer.ca.root.signature_hash_algorithm).hex()  # type: ignore[arg-type]
    serials = [
        issuer._issue_sync(IssueRequest(names=(f"r{i}.example.test",))).serial for i in range(count)
    ]
    return [root, *serials]


def test_replicas_sharing_the_state_dir_make_one_ca_and_one_index(tmp_path: Path) -> None:
    """Three processes start on one empty ``state_dir`` at once (replicas on a shared volume):
    one creates the hierarchy and the others load it (before, two could write their own keys
    over each other's certificates: "the CA key does not match its certificate"), and every
    serial any of them issued is in the index (each read-modify-write under the lock)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.starmap(_start_replica, [(str(tmp_path / "ca"), 4)] * 3)
    assert len({r[0] for r in results}) == 1  # one root
    issued = {s for r in results for s in r[1:]}
    assert len(issued) == 12
    index = json.loads((tmp_path / "ca" / "index.json").read_text())
    assert set(index["issued"]) == issued
    reopened = make(tmp_path, FixedClock(NOW))
    assert set(reopened.issued_serials()) == issued
