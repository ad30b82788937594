"""A compact Merkle range: the leaves ``[0, size)`` of a log, kept as O(log n) subtree hashes.

A monitor that downloads a log's entries must check that they are the ones the signed tree
head commits to. Keeping every leaf hash would cost 32 bytes per entry (billions in real
logs); the perfect subtrees covering ``[0, size)`` (one per set bit of ``size``, largest first)
are enough to append leaves and compute the root at any size (RFC 6962 section 2.1). certspotter
calls this a "collapsed tree"; transparency-dev calls it a compact range.

A monitor that starts in the middle of a log (``--from-index N``) has no leaves before ``N``:
:func:`range_from_inclusion` rebuilds the range ``[0, N)`` from a *verified* audit path of leaf
``N - 1``: the left siblings on that path are exactly the perfect subtrees covering the leaves
before it. Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ctwatch.rfc6962 import HASH_SIZE, empty_root, node_hash, verify_inclusion


@dataclass(slots=True)
class CompactRange:
    """Subtree hashes covering leaves ``[0, size)``, largest (leftmost) first."""

    size: int = 0
    nodes: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.size < 0 or len(self.nodes) != self.size.bit_count():
            raise ValueError(
                f"a range of {self.size} leaves has {self.size.bit_count()} nodes, "
                f"not {len(self.nodes)}"
            )
        if any(len(n) != HASH_SIZE for n in self.nodes):
            raise ValueError(f"range nodes must be {HASH_SIZE}-byte hashes")

    def append(self, leaf_hash: bytes) -> None:
        """Add the next leaf (its RFC 6962 leaf hash), merging equal-sized subtrees."""
        nodes = self.nodes
        nodes.append(leaf_hash)
        s = self.size
        while s & 1:
            right = nodes.pop()
            nodes[-1] = node_hash(nodes[-1], right)
            s >>= 1
        self.size += 1

    def root(self) -> bytes:
        """``MTH(D[0:size])``: the root a tree head of this size must carry."""
        if not self.nodes:
            return empty_root()
        r = self.nodes[-1]
        for n in reversed(self.nodes[:-1]):
            r = node_hash(n, r)
        return r

    def copy(self) -> CompactRange:
        return CompactRange(self.size, list(self.nodes))

    def to_json(self) -> dict[str, object]:
        return {"size": self.size, "nodes": [n.hex() for n in self.nodes]}

    @classmethod
    def from_json(cls, data: object) -> CompactRange:
        """Inverse of :meth:`to_json`; ``ValueError`` for anything else."""
        if not isinstance(data, dict):
            raise ValueError("compact range is not an object")
        size, nodes = data.get("size"), data.get("nodes")
        if not isinstance(size, int) or not isinstance(nodes, list):
            raise ValueError("compact range needs an integer size and a list of nodes")
        if not all(isinstance(n, str) for n in nodes):
            raise ValueError("compact range nodes must be hex strings")
        return cls(size, [bytes.fromhex(n) for n in nodes])


def range_from_inclusion(
    index: int, leaf_hash: bytes, tree_size: int, path: Sequence[bytes], root: bytes
) -> CompactRange | None:
    """The range ``[0, index + 1)`` from the audit path of leaf ``index`` in a tree of
    ``tree_size`` whose (verified) root is ``root``; ``None`` when the path does not verify.

    Walking up from the leaf as RFC 9162 section 2.1.3.2 does, a path node is a *left* sibling
    exactly when the verifier hashes it on the left; those siblings are the perfect subtrees
    covering ``[0, index)``, met smallest first.
    """
    if not verify_inclusion(leaf_hash, index, tree_size, path, root):
        return None
    lefts: list[bytes] = []
    fn, sn = index, tree_size - 1
    for p in path:
        if fn & 1 or fn == sn:
            lefts.append(p)  # hashed on the left: a perfect subtree before the leaf
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        fn >>= 1
        sn >>= 1
    try:
        out = CompactRange(index, lefts[::-1])
    except ValueError:
        return None
    out.append(leaf_hash)
    return out


__all__ = ["CompactRange", "range_from_inclusion"]
