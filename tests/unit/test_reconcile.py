"""Stored vs served vs issued: not_deployed and unmanaged (certpilot.domain.reconcile)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from certpilot.domain.model import Observation
from certpilot.domain.problems import ProblemCode
from certpilot.domain.reconcile import Reconciler, reconcile
from certpilot.domain.sli import valid_ratio_events
from certpilot.domain.x509 import parse_pem_bundle
from certpilot.localca import Issued, LocalCA

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _obs(source: str, ref: str, issued: Issued) -> Observation:
    (parsed,) = parse_pem_bundle(issued.cert_pem())
    assert not isinstance(parsed, Exception)
    return Observation(source=source, ref=ref, target=ref, observed_at=NOW, leaf=parsed.info)


def test_a_newer_stored_certificate_makes_the_served_one_not_deployed() -> None:
    ca = LocalCA("R", NOW)
    old = ca.issue(["www.example.com"], NOW, not_before=NOW - timedelta(days=60))
    new = ca.issue(["www.example.com"], NOW, not_before=NOW - timedelta(hours=2))
    served = _obs("tls", "tls://www.example.com:443#www.example.com", old)
    stored_old = _obs("file", "file:///etc/certs/www.pem#0", old)
    stored_new = _obs("openbao", "openbao://bao/secret/tls/www#certificate", new)
    out = reconcile([served, stored_old, stored_new])
    (problem,) = out[0].problems
    assert problem.code == ProblemCode.NOT_DEPLOYED
    assert "openbao://bao/secret/tls/www#certificate" in problem.message
    assert new.serial_hex in problem.message
    # Stored ones are never flagged; the valid-ratio SLI still counts the endpoint good.
    assert out[1].problems == () and out[2].problems == ()
    assert [e.good for e in valid_ratio_events(out, NOW)] == [True]


def test_the_same_key_links_a_renewal_with_other_names() -> None:
    ca = LocalCA("R", NOW)
    old = ca.issue(["a.example.com"], NOW, not_before=NOW - timedelta(days=30))
    new = ca.issue(["a.example.com", "b.example.com"], NOW, key=old.key)
    out = reconcile(
        [_obs("tls", "tls://a:443#a", old), _obs("k8s", "k8s://c/ns/secret/a#tls.crt", new)]
    )
    assert out[0].codes == (ProblemCode.NOT_DEPLOYED,)


def test_an_expired_or_future_stored_copy_is_no_fix() -> None:
    ca = LocalCA("R", NOW)
    old = ca.issue(["w.example.com"], NOW, not_before=NOW - timedelta(days=60))
    future = ca.issue(["w.example.com"], NOW, not_before=NOW + timedelta(days=1))
    out = reconcile(
        [_obs("tls", "tls://w:443#w", old), _obs("file", "file:///f#0", future)],
        stores_scanned=True,
    )
    assert out[0].codes == (ProblemCode.UNMANAGED,)  # and the stored future one is not it


def test_served_in_no_store_is_unmanaged_unless_certpilot_issued_it() -> None:
    ca = LocalCA("R", NOW)
    mine, theirs, stored = (ca.issue([f"{n}.example.com"], NOW) for n in ("m", "t", "s"))
    obs = [
        _obs("tls", "tls://m:443#m", mine),
        _obs("tls", "tls://t:443#t", theirs),
        _obs("tls", "tls://s:443#s", stored),
        _obs("file", "file:///s.pem#0", stored),
    ]
    (fp_mine,) = {o.leaf.fingerprint_sha256 for o in obs[:1] if o.leaf}
    out = reconcile(obs, issued=[fp_mine.upper()])
    assert [o.codes for o in out[:3]] == [(), (ProblemCode.UNMANAGED,), ()]
    # No store in the cycle: nothing is called unmanaged (there is nothing to compare with).
    assert all(not o.problems for o in reconcile(obs[:3]))


def test_reconciling_twice_adds_nothing_more() -> None:
    ca = LocalCA("R", NOW)
    c = ca.issue(["x.example.com"], NOW)
    once = reconcile([_obs("tls", "tls://x:443#x", c)], stores_scanned=True)
    twice = reconcile(once, stores_scanned=True)
    assert once == twice and len(twice[0].problems) == 1


def test_served_batches_reconciled_against_the_stored_ones_equal_one_whole_reconcile() -> None:
    """What a scan cycle does now that it records endpoints chunk by chunk: a ``Reconciler``
    built from the cycle's stored observations, applied to each batch of served ones."""
    ca = LocalCA("R", NOW)
    names = [f"n{i}.example.com" for i in range(9)]
    old = {n: ca.issue([n], NOW, not_before=NOW - timedelta(days=40)) for n in names}
    new = {n: ca.issue([n], NOW, not_before=NOW - timedelta(hours=1)) for n in names[:3]}
    served = [_obs("tls", f"tls://{n}:443#{n}", old[n]) for n in names]
    stored = [_obs("file", f"file:///{n}.pem#0", c) for n, c in new.items()]
    stored.append(_obs("k8s", "k8s://c/ns/secret/n3#tls.crt", old[names[3]]))
    issued = [old[names[4]]]
    issued_fps = [
        _obs("tls", "x", c).leaf.fingerprint_sha256  # type: ignore[union-attr]
        for c in issued
    ]
    whole = reconcile([*served, *stored], issued=issued_fps)
    rec = Reconciler([*served, *stored], issued=issued_fps)  # served ones are ignored here
    batches = [rec.apply(served[i : i + 2]) for i in range(0, len(served), 2)]
    assert [o for b in batches for o in b] + rec.apply(stored) == whole
    codes = [o.codes for o in whole[: len(served)]]
    assert codes[:3] == [(ProblemCode.NOT_DEPLOYED,)] * 3
    assert codes[3:5] == [(), ()]  # stored in Kubernetes; issued by certpilot
    assert codes[5:] == [(ProblemCode.UNMANAGED,)] * 4
