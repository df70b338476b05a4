"""Class vocabularies: ImageNet's (offline, from timm) or a model's own; resolving a typed class."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from timm.data import ImageNetInfo

from dualerase.errors import UsageError


@dataclass
class Classes:
    """The names of a model's classes, and their ImageNet synsets where they are ImageNet's."""

    # a name may list synonyms separated by commas, as ImageNet's do ("tench, Tinca tinca")
    names: list[str]
    synsets: list[str] | None = None
    # False: ids only ("class 3"), so data folders can map to classes only in sorted order
    named: bool = True

    def __len__(self) -> int:
        """The number of classes."""
        return len(self.names)

    def short(self, c: int) -> str:
        """The first synonym of class c."""
        return self.names[c].split(",")[0].strip()


def imagenet() -> Classes:
    """ImageNet-1k in its standard order (sorted synsets), with timm's descriptions."""
    info = ImageNetInfo()
    return Classes(names=[info.index_to_description(i) for i in range(1000)],
                   synsets=list(info.label_names()))


def for_model(num_classes: int, id2label: dict[int, str] | None = None,
              folders: list[str] | None = None) -> Classes:
    """The vocabulary of a model with `num_classes` classes.

    ImageNet's for 1000 classes (named by `id2label` where it gives names, after
    `check_imagenet_order`), else its `id2label`, the data's `folders`, or ids."""
    if num_classes == 1000:
        classes = imagenet()
        if id2label:
            check_imagenet_order(id2label, classes)
            classes.names = [id2label.get(i, classes.names[i]) for i in range(1000)]
        return classes
    if id2label and len(id2label) == num_classes:
        names = [id2label[i] for i in range(num_classes)]
        # a subset of ImageNet: folders by synset
        synsets = imagenet_synsets(names)
        if synsets is None and folders:
            check_distinct(names, folders)
        return Classes(names=names, synsets=synsets)
    if folders and len(folders) == num_classes:
        return Classes(names=list(folders))
    return Classes(names=[f"class {i}" for i in range(num_classes)], named=False)


def check_distinct(names: list[str], folders: list[str]) -> None:
    """Refuse (UsageError) data folders that name no class when the model's names are to blame.

    Folders are matched to classes by name or synonym (any case); a class whose every name another
    class shares cannot be matched, so a folder meant for it names none: the message names the
    classes that share the name, not the folder."""
    words: dict[str, set[int]] = {}
    for c, name in enumerate(names):
        for word in name_words(name):
            words.setdefault(word, set()).add(c)
    unmatched = [f for f in folders if f.strip().lower() not in words]
    for name in names if unmatched else ():
        shared = [words[word] for word in name_words(name)]
        if all(len(s) > 1 for s in shared):
            same = " and ".join(f"{i} ({names[i]!r})" for i in sorted(set().union(*shared)))
            raise UsageError(f"--data sub-folder {unmatched[0]!r} names none of the model's "
                             f"classes, and the model's id2label gives classes {same} the same "
                             "name, so no folder can tell them apart: give the model distinct "
                             "class names (its id2label in model_index.json)")


def name_words(name: str) -> set[str]:
    """The words a class name answers to: the whole name and each synonym, stripped, lower case."""
    return {name.strip().lower(), *(w.strip().lower() for w in name.split(","))}


def check_imagenet_order(id2label: dict[int, str], standard: Classes) -> None:
    """Refuse (UsageError) an id2label that names an ImageNet class at another index.

    A 1000-class model's data folders and FA classifier follow ImageNet's order (sorted synsets), or
    the name would follow one class and the images and scores another. A name that is no ImageNet
    class (a model's own word) cannot be checked and is kept."""
    words: dict[str, set[int]] = {}
    for i, (name, synset) in enumerate(zip(standard.names, standard.synsets)):
        for word in {synset.lower(), *name_words(name)}:
            words.setdefault(word, set()).add(i)
    for i, name in sorted(id2label.items()):
        found = words.get(name.strip().lower(), set()) or \
            set.intersection(*[words.get(w.strip().lower(), set()) for w in name.split(",")])
        if found and i not in found and len(found) == 1:
            j = min(found)
            raise UsageError(f"the model's id2label names class {i} {name!r}, which is ImageNet "
                             f"class {j} ({standard.short(j)}, {standard.synsets[j]}); its class "
                             f"{i} is {standard.short(i)} ({standard.synsets[i]}) in the order the "
                             "data folders and the FA classifier follow: give a model whose "
                             "id2label is in ImageNet's order (sorted synsets)")


def imagenet_synsets(names: list[str]) -> list[str] | None:
    """The ImageNet synset each name stands for, or None unless every name has its own.

    A name may be a synset, a full description or an unambiguous synonym. With a synset each, the
    model's classes are a subset of ImageNet's, in the model's order."""
    info = imagenet()
    lookup: dict[str, set[int]] = {}
    for i, (name, synset) in enumerate(zip(info.names, info.synsets)):
        for word in {synset.lower(), *name_words(name)}:
            lookup.setdefault(word, set()).add(i)
    found = [lookup.get(name.strip().lower(), set()) for name in names]
    if any(len(hits) != 1 for hits in found) or len(set(map(min, found))) < len(found):
        return None
    return [info.synsets[min(hits)] for hits in found]


def resolve_class(text: str, classes: Classes) -> int:
    """The class index `text` names: an index, an ImageNet synset, or a name or synonym (any case).

    Raises UsageError, with a hint, for an index out of range, an ambiguous name, or no class."""
    n = len(classes)
    key = text.strip().lower()
    if re.fullmatch(r"-?[0-9]+", key):
        c = int(key)
        if 0 <= c < n:
            return c
        raise UsageError(f"class {c} is out of range: this model has classes 0..{n - 1}")
    if classes.synsets and key in (s.lower() for s in classes.synsets):
        return [s.lower() for s in classes.synsets].index(key)
    synonyms: dict[str, list[int]] = {}
    for c, name in enumerate(classes.names):
        for word in name_words(name):
            synonyms.setdefault(word, []).append(c)
    if key in synonyms:
        found = synonyms[key]
        if len(found) > 1:  # ImageNet has a few: "crane" is a bird (134) and a machine (517)
            options = ", ".join(f"{c} ({classes.names[c]})" for c in found)
            raise UsageError(f"class name {text!r} is ambiguous: {options}; give the index or "
                             "synset")
        return found[0]
    if classes.synsets and key.startswith("n") and key[1:].isdigit():
        which = "ImageNet's 1000" if n == 1000 else f"{n} ImageNet synsets"
        raise UsageError(f"unknown synset {text!r}: this model's classes are {which} "
                         f"(e.g. {classes.synsets[0]})")
    close = difflib.get_close_matches(key, list(synonyms), n=3, cutoff=0.6)
    hint = (f"did you mean {', '.join(repr(w) for w in close)}?" if close
            else f"give a class index 0..{n - 1}")
    raise UsageError(f"unknown class {text!r}: {hint}")
