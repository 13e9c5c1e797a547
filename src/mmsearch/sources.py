"""Where images to index come from: a folder (recursively), a CSV in the reference format
(``id,path,label``), or one image; and the stable id of each file.

A source only lists files: it reads none of them. What it will not let be read (a link out
of an indexed folder) it lists as refused, so that the run's report says why.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mmsearch.images import IMAGE_SUFFIXES


class SourceError(ValueError):
    """The thing to index is not a folder, a CSV or an image; the message says which."""


@dataclass(frozen=True)
class SourceItem:
    """One file to index and the label it came with (folder name or CSV column).

    ``refused`` says why the source will not let it be read (a link out of the folder)."""

    path: Path
    label: str = ""
    refused: str = ""
    #: A catalog's product title (CSV column ``title``), for embedders that fuse an image
    #: with its title into one vector (``dashscope_fusion``).
    title: str = ""


def item_id(path: Path) -> str:
    """Stable id of a file: the same absolute path always maps to the same row."""
    return hashlib.blake2b(str(path.resolve()).encode("utf-8"), digest_size=12).hexdigest()


OUTSIDE_LINK = (
    "a symbolic link to a file outside the indexed folder (set follow_symlinks to index it)"
)


def label_for(path: Path, root: Path) -> str:
    """A file's label in a folder: the name of the folder that holds it."""
    return path.parent.name if path.parent != root else root.name


def iter_folder(root: Path, *, follow_symlinks: bool = False) -> Iterator[SourceItem]:
    """Image files under ``root``, recursively, in a stable order; label = parent folder.

    Symbolic links to folders are not followed, so a link loop cannot trap the walk. A link
    to a file outside ``root`` is listed as refused unless ``follow_symlinks``: indexing a
    folder must not publish what lies beyond it. Names that are not valid UTF-8 are kept as
    the OS gives them (surrogate escapes).
    """
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            label = label_for(path, root)
            outside = path.is_symlink() and not path.resolve().is_relative_to(real_root)
            refused = OUTSIDE_LINK if outside and not follow_symlinks else ""
            yield SourceItem(path, label, refused)


def iter_csv(csv_path: Path) -> Iterator[SourceItem]:
    """Rows of a CSV in the reference format ``id,path,label`` (paths relative to the CSV)."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            yield from _csv_rows(csv_path, csv.DictReader(fh))
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{csv_path}: not UTF-8 text (byte {exc.object[exc.start]:#x} at offset "
            f"{exc.start}); save the CSV as UTF-8"
        ) from None
    except csv.Error as exc:
        raise SourceError(f"{csv_path}: not a readable CSV: {exc}") from None


def _csv_rows(csv_path: Path, reader: csv.DictReader) -> Iterator[SourceItem]:
    if not reader.fieldnames or "path" not in reader.fieldnames:
        raise SourceError(
            f"{csv_path}: a CSV source needs a 'path' column (reference format: id,path,label)"
        )
    for row in reader:
        raw = (row.get("path") or "").strip()
        if not raw:
            continue
        path = Path(raw)
        if not path.is_absolute():
            path = csv_path.parent / path
        label, title = (row.get("label") or "").strip(), (row.get("title") or "").strip()
        yield SourceItem(Path(os.path.normpath(path)), label, title=title)


def iter_source(source: Path, *, follow_symlinks: bool = False) -> Iterator[SourceItem]:
    """A folder, a CSV file, or one image file."""
    source = Path(source)
    if source.is_dir():
        return iter_folder(source, follow_symlinks=follow_symlinks)
    if not source.exists():
        raise SourceError(f"{source}: no such file or folder")
    if source.suffix.lower() == ".csv":
        return iter_csv(source)
    if source.suffix.lower() in IMAGE_SUFFIXES:
        return iter([SourceItem(source, source.parent.name)])
    raise SourceError(f"{source}: not a folder, a .csv file or an image")


def unique_files(
    items: Iterable[SourceItem], limit: int | None
) -> tuple[list[tuple[str, SourceItem]], int]:
    """(id, item) for each file once, in order, up to ``limit``; and how many were repeats.

    Two entries with one id (a CSV naming a file twice, a link beside its target) would be
    two rows in one write batch, which the Milvus 2.3 server stores twice.
    """
    seen: dict[str, SourceItem] = {}
    repeats = 0
    for item in items:
        if limit is not None and len(seen) >= limit:
            break
        id_ = item_id(item.path)
        if id_ in seen:
            repeats += 1
        else:
            seen[id_] = item
    return list(seen.items()), repeats
