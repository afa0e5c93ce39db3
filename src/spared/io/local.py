"""Local sources: the user's own copy of a dataset's files, used in place of a download (``--from PATH``).

A local folder may hold the dataset's files themselves (archives, count tables, images: each is linked into the
dataset folder under its catalogue name and then checked as a download is: format, sha256), an archive's
unpacked folder, or one archive's contents. Unpacked content is mirrored as real folders holding one link per
file (so that files spared derives, e.g. decompressed ``.gz``, stay in the dataset folder), and recorded in a
manifest beside it (``<unpack folder>/.spared-local.<archive>``): for every linked file, the user's file behind
it, its sha256, size and modification time.

The link step checks before it changes anything: every file is format-sniffed (an HTML page named ``.h5`` is
refused) and hashed; links inside the source that lead out of it are refused (unless ``allow_external_links``),
and loops are errors naming the link. The links are built in a staging folder and renamed into place, so a
failed step leaves the dataset folder as it was. A later ``--from`` is compared with what is linked: a different
file, or a different folder, is linked anew (for datasets sharing a download folder, only the parts the dataset
uses are replaced). Every later use re-checks the manifest cheaply (size and modification time; a changed file
is hashed again): a link removed by hand is re-made, a user's file that moved or vanished, or whose content
changed, is an error naming it and saying how to recover.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from spared.catalog import DatasetSpec, FileSpec
from spared.io.atomic import remove_path, staged, temp_sibling, write_text
from spared.io.errors import ChecksumError, DownloadError
from spared.io.scan import MACOS_FOLDER, is_glob, pattern_under, visible_glob
from spared.io.sniff import FormatError, check_format, sha256sum

#: Name prefix of the manifest of an archive's content linked from a local folder.
LOCAL_PREFIX = ".spared-local."


class LocalSourceError(DownloadError):
    """A local source that cannot be used as given (not a folder, a link leaving it, a loop, a conflict)."""


class LocalFileChanged(ChecksumError):
    """A user's file behind a link changed since it was linked (its sha256 differs from the recorded one)."""


def _say(message: str) -> None:
    print(message, file=sys.stderr)


# --- the manifest --------------------------------------------------------------------------------------------


def manifest_path(f: FileSpec, folder: Path) -> Path:
    """Where the manifest of archive ``f``'s linked content lies (inside its unpack folder)."""
    return folder / f.target / f"{LOCAL_PREFIX}{PurePosixPath(f.filename).name}"


def read_manifest(f: FileSpec, folder: Path) -> dict[str, Any] | None:
    """The manifest of archive ``f``'s linked content: ``archive``, ``source``, ``entries`` (top-level names) and
    ``files`` (path below the unpack folder → ``source``, ``sha256``, ``size``, ``mtime_ns``); ``None`` when
    there is none or it is unreadable. A manifest written before files were hashed is completed from the links
    on disk (each user file hashed once)."""
    path = manifest_path(f, folder)
    try:
        data = json.loads(path.read_text())
        entries = [str(e) for e in data["entries"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    files = data.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, dict) and "sha256" in v for v in files.values()):
        target = folder / f.target
        files = {rel: _record(user) for rel, user in _links_below(target, entries).items() if user.is_file()}
        data["files"] = files
        write_text(path, json.dumps(data, indent=1, sort_keys=True))
    return {**data, "entries": entries}


def _record(user: Path, sha: str | None = None) -> dict[str, Any]:
    st = user.stat()
    return {"source": str(user), "sha256": sha or sha256sum(user), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _links_below(target: Path, entries: list[str]) -> dict[str, Path]:
    """Every link below ``target``'s ``entries``: path relative to ``target`` → the file it leads to."""
    out = {}
    for entry in entries:
        for root, dirs, files in os.walk(target / entry):
            for name in dirs + files:
                path = Path(root, name)
                if path.is_symlink():
                    out[path.relative_to(target).as_posix()] = Path(os.path.realpath(path))
        if (target / entry).is_symlink():
            out[entry] = Path(os.path.realpath(target / entry))
    return out


def provided_locally(f: FileSpec, folder: Path, spec: DatasetSpec | None = None) -> bool:
    """Whether the unpacked content of archive ``f`` was linked from a local folder (and its entries are there);
    with ``spec``, also whether it holds what that dataset uses (datasets sharing an archive may have linked
    only their own parts)."""
    path = manifest_path(f, folder)
    if not path.is_file():
        return False
    try:
        entries = json.loads(path.read_text())["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    target = folder / f.target
    if not (entries and all((target / name).exists() for name in entries)):
        return False
    return spec is None or all(_exists(target, rest) for rest in own_patterns(spec, f.target))


def own_patterns(spec: DatasetSpec, target: str) -> list[str]:
    """The rest below ``target`` of every slide pattern (``path``, ``image``, ``hires_image``, ``counts``,
    ``spots``) of ``spec`` that lies strictly below it: the parts of a shared archive this dataset uses."""
    out = []
    for s in spec.slides:
        for name in ("path", "image", "hires_image", "counts", "spots"):
            value = getattr(s, name, None)
            rest = pattern_under(value, target) if value else None
            if rest:
                out.append(rest)
    return list(dict.fromkeys(out))


def _below(rel: str, pattern: str) -> bool:
    """Whether the relative path ``rel`` lies at or below the glob ``pattern`` (component by component)."""
    parts, pat = PurePosixPath(rel).parts, PurePosixPath(pattern).parts
    return len(parts) >= len(pat) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pat, strict=False))


def _used_records(spec: DatasetSpec, f: FileSpec, folder: Path) -> list[tuple[str, dict[str, Any]]] | None:
    """The manifest records (path below the unpack folder, record) of archive ``f``'s linked content that
    ``spec`` uses, sorted by path; ``None`` when ``f``'s content is not linked from a local folder."""
    manifest = read_manifest(f, folder)
    if manifest is None:
        return None
    patterns = own_patterns(spec, f.target)
    return [(rel, rec) for rel, rec in sorted(manifest["files"].items())
            if not patterns or any(_below(rel, p) for p in patterns)]


def linked_files(spec: DatasetSpec, f: FileSpec, folder: Path) -> dict[str, str]:
    """The user's files behind archive ``f``'s linked content that ``spec`` uses, with their recorded sha256."""
    return {rec["source"]: rec["sha256"] for _, rec in _used_records(spec, f, folder) or []}


def tree_fingerprint(spec: DatasetSpec, f: FileSpec, folder: Path) -> str | None:
    """A hash of the linked content of archive ``f`` that ``spec`` uses (the recorded sha256 of each file, with
    its size and modification time checked: a file changed since it was hashed counts as other content);
    ``None`` when ``f``'s content is not linked from a local folder, or none of what ``spec`` uses is (a shared
    archive linked for another dataset holds nothing of this one)."""
    used = _used_records(spec, f, folder)
    if not used:
        return None
    digest = hashlib.sha256()
    for rel, rec in used:
        try:
            st = Path(rec["source"]).stat()
            state = rec["sha256"] if (st.st_size, st.st_mtime_ns) == (rec["size"], rec["mtime_ns"]) else \
                f"changed:{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            state = "missing"
        digest.update(f"{rel}\0{state}\n".encode())
    return "local:" + digest.hexdigest()[:16]


# --- scanning a source ---------------------------------------------------------------------------------------


def _real(path: Path, root: Path, allow_external: bool) -> Path:
    """The real path behind ``path`` (links followed); a loop, a dangling link, or (unless ``allow_external``) a
    path leading out of ``root`` is a :class:`LocalSourceError` naming the link."""
    try:
        real = Path(os.path.realpath(path, strict=True))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LocalSourceError(f"{path} is a symbolic link in a loop (following it leads back to it): fix or "
                                   f"remove that link in your folder, then run the command again; nothing was "
                                   f"linked") from None
        raise LocalSourceError(f"{path} is a link to {os.readlink(path) if path.is_symlink() else path}, which "
                               f"does not exist: fix or remove that link in your folder, then run the command "
                               f"again; nothing was linked") from None
    if not allow_external and real != root and root not in real.parents:
        raise LocalSourceError(f"{path} leads to {real}, outside the folder {root} given to --from; spared does "
                               f"not follow links out of it (they could bring in files that are not the "
                               f"dataset's). Move or copy the files into {root}, give the folder they are in to "
                               f"--from, or allow it with --allow-external-links (Python: "
                               f"allow_external_links=True); nothing was linked")
    return real


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == MACOS_FOLDER


def scan_files(src: Path, root: Path, allow_external: bool = False) -> dict[str, Path]:
    """Every visible regular file at or below ``src`` (inside the source ``root``): path relative to ``src``
    (``""`` when ``src`` is a file) → the real file. Links are followed once checked (:func:`_real`); a folder
    link back to one of its own parents is a loop."""
    out: dict[str, Path] = {}

    def visit(path: Path, rel: str, chain: frozenset[Path]) -> None:
        real = _real(path, root, allow_external) if path.is_symlink() else path
        if real.is_dir():
            if real in chain:
                raise LocalSourceError(f"{path} is a link back to {real}, one of the folders it lies in (a loop): "
                                       f"remove that link in your folder, then run the command again; nothing was "
                                       f"linked")
            for child in sorted(real.iterdir()):
                if not _hidden(child.name):
                    visit(path / child.name, f"{rel}/{child.name}" if rel else child.name, chain | {real})
        elif real.is_file():
            out[rel] = real

    start = _real(src, root, allow_external)
    visit(src, "", frozenset({start.parent}))
    return out


def _check_file(user: Path, name: str, link: Path, source: Path) -> None:
    """Format check of a user's file before it is linked as ``link`` (named ``name``)."""
    try:
        check_format(user, name)
    except FormatError as exc:
        raise FormatError(f"{exc}; it would be linked as {link}. Replace it in your folder {source} with the right "
                          f"file (spared never modifies or deletes your files), then run the command again; nothing "
                          f"was linked") from None


# --- the link step -------------------------------------------------------------------------------------------


def _candidates(f: FileSpec, source: Path) -> list[Path]:
    """Where a file may lie in a local folder: its catalogue path or any trailing part of it (``a/b/c.tsv``,
    ``b/c.tsv``, ``c.tsv``: the user may point at a folder inside the catalogue's layout), the URL's last
    component."""
    parts = PurePosixPath(f.filename).parts
    names = [str(PurePosixPath(*parts[i:])) for i in range(len(parts))]
    names.append(PurePosixPath(f.url.split("?", 1)[0]).name)
    return [source / n for n in dict.fromkeys(names) if n and (source / n).is_file()]


def _exists(folder: Path, pattern: str) -> bool:
    if is_glob(pattern):
        return bool(visible_glob(folder, pattern))
    return (folder / pattern).exists()


def _visible_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not _hidden(p.name))


def _unpacked_source(spec: DatasetSpec, f: FileSpec, source: Path) -> tuple[Path, list[str], list[str]] | None:
    """Where ``source`` holds archive ``f`` unpacked, which entries to link there when nothing is linked yet, and
    those the dataset itself uses (to link anew when a shared archive's content is linked already).

    Either ``source/<unpack folder>`` (the archive unpacked beside itself) or ``source`` itself holding the
    archive's contents (every slide pattern below the unpack folder resolves in it).
    """
    rests = own_patterns(spec, f.target)
    for candidate in dict.fromkeys([source / f.target, source / PurePosixPath(f.target).name]):
        if candidate.is_dir() and candidate != source:
            entries = _visible_entries(candidate)
            return candidate, entries, _matches(candidate, rests) or entries
    if rests and all(_exists(source, rest) for rest in rests):
        tops = {PurePosixPath(rest).parts[0] for rest in rests}
        entries = sorted({p.name for top in tops for p in visible_glob(source, top)})
        return source, entries, _matches(source, rests) or entries
    return None


def _matches(where: Path, rests: list[str]) -> list[str]:
    """The paths below ``where`` that the patterns match (``[]`` unless every pattern matches something)."""
    found = [[p.relative_to(where).as_posix() for p in visible_glob(where, rest)] for rest in rests]
    if not rests or not all(found):
        return []
    return sorted({m for group in found for m in group})


@dataclass
class _FilePlan:
    f: FileSpec
    dest: Path
    user: Path
    current: Path | None = None  # the file the existing link leads to


@dataclass
class _TreePlan:
    f: FileSpec
    folder: Path
    target: Path
    where: Path
    units: list[str]
    links: dict[str, Path] = field(default_factory=dict)  # path below target → user file
    records: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class LinkResult:
    """What :func:`link_local_source` did: a line per catalogue file, and the files linked from the source
    (checked again and recorded anew by the caller, as they are the user's current files)."""

    lines: list[str]
    fresh: set[str]


def _same_content(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and sha256sum(a) == sha256sum(b)


def _plan_file(spec: DatasetSpec, f: FileSpec, folder: Path, source: Path, allow_external: bool) -> _FilePlan | None:
    files = _candidates(f, source)
    if not files:
        return None
    user = _real(files[0], source, allow_external)
    dest = folder / f.filename
    _check_file(user, f.filename, dest, source)
    if dest.is_symlink():
        return _FilePlan(f, dest, user, Path(os.path.realpath(dest)))
    if dest.is_file() and not _same_content(dest, user):
        raise LocalSourceError(f"{dest} is already in the dataset folder (downloaded or placed there) and differs "
                               f"from {user}; spared never deletes it. To use the file from --from, move {dest} "
                               f"away and run the command again; to keep it, run without --from")
    return _FilePlan(f, dest, user, dest if dest.is_file() else None)


def _plan_tree(spec: DatasetSpec, f: FileSpec, folder: Path, source: Path, allow_external: bool) -> _TreePlan | None:
    found = _unpacked_source(spec, f, source)
    if found is None:
        return None
    where, entries, own = found
    target = folder / f.target
    manifest = read_manifest(f, folder)
    units = entries
    if manifest:  # linked before: the dataset's own parts, and files whose user file is gone if this source has them
        gone = [rel for rel, rec in manifest["files"].items() if not Path(rec["source"]).is_file()]
        units = own + [rel for rel in gone if (where / rel).exists() and not any(_below(rel, u) for u in own)]
    plan = _TreePlan(f, folder, target, where, units, records=dict(manifest["files"]) if manifest else {})
    for unit in plan.units:
        for rel, user in scan_files(where / unit, source, allow_external).items():
            path = f"{unit}/{rel}" if rel else unit
            _check_file(user, PurePosixPath(path).name, target / path, source)
            plan.links[path] = user
    return plan


def _unchanged(plan: _TreePlan) -> bool:
    """Whether the units of ``plan`` are linked already, each link to the same user file."""
    recorded = {rel: Path(rec["source"]) for rel, rec in plan.records.items()
                if any(_below(rel, unit) for unit in plan.units)}
    return recorded == plan.links and all(
        (plan.target / rel).is_symlink() and Path(os.path.realpath(plan.target / rel)) == user
        for rel, user in plan.links.items())


def link_local_source(spec: DatasetSpec, folder: Path, source: Path, allow_external_links: bool = False,
                      optional: Collection[str] = ()) -> LinkResult:
    """Make the files of a local folder available in the dataset folder without copying them (see the module).

    For each catalogue file: the file itself in ``source`` (by its catalogue path, its name or the URL's last
    component) is linked under its catalogue name; for an archive, its unpacked folder in ``source``, or
    ``source`` itself when it holds the archive's contents, is mirrored as folders of links with a manifest of
    hashes. Everything is checked first (formats, links leaving the source, loops, a downloaded file that
    differs), then linked through a staging folder: an error leaves the dataset folder as it was. A source that
    holds none of the files is an error, unless every file but the ``optional`` ones is in the dataset folder
    already (a warning then).

    Raises
    ------
    LocalSourceError
        ``source`` is not a folder, holds a link that leaves it or loops, or conflicts with a downloaded file.
    FormatError
        A file is not what its name says.
    """
    source = Path(source)
    if not source.is_dir():
        raise LocalSourceError(_not_a_folder(spec, source))
    file_plans, tree_plans, lines = [], [], []
    for f in spec.files:
        plan = _plan_file(spec, f, folder, source, allow_external_links)
        if plan is not None:
            file_plans.append(plan)
            continue
        tree = _plan_tree(spec, f, folder, source, allow_external_links) if f.unpack else None
        if tree is not None and (folder / f.filename).exists():
            lines.append(f"{f.filename}: kept the archive already in the dataset folder; the unpacked copy in "
                         f"{tree.where} is not used (move {folder / f.filename} away to use it)")
        elif tree is not None:
            tree_plans.append(tree)
    if not file_plans and not tree_plans:
        if all((folder / f.filename).exists() or provided_locally(f, folder, spec) for f in spec.files
               if f.filename not in optional):
            _say(f"warning: {source} holds none of the files of dataset {spec.key!r}; using those already in the "
                 f"dataset folder {folder}")
            return LinkResult(lines, set())
        raise LocalSourceError(_holds_none(spec, source))
    for plan in file_plans:
        lines.append(_link_file(plan))
    for tree in tree_plans:
        lines.append(_link_tree(spec, tree))
    for line in lines:
        _say(f"{spec.key}: {line}")
    return LinkResult(lines, {p.f.filename for p in file_plans})


def _link_file(plan: _FilePlan) -> str:
    name = plan.f.filename
    if plan.current == plan.user:
        return f"{name}: linked to {plan.user} (unchanged)"
    if plan.current is not None and not plan.dest.is_symlink():
        return f"{name}: already in the dataset folder, with the same content as {plan.user}"
    plan.dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(plan.dest)
    with staged(tmp, plan.dest.parent, f"linking {name}"):
        tmp.symlink_to(plan.user)
        os.replace(tmp, plan.dest)
    was = f" (was {plan.current})" if plan.current is not None else ""
    return f"{name}: linked to {plan.user}{was}"


def _link_tree(spec: DatasetSpec, plan: _TreePlan) -> str:
    name = plan.f.filename
    if _unchanged(plan):
        return f"{name}: unpacked content linked from {plan.where} (unchanged, {len(plan.links)} files)"
    records = {rel: rec for rel, rec in plan.records.items() if not any(_below(rel, u) for u in plan.units)}
    for rel, user in plan.links.items():
        old = plan.records.get(rel)
        same = old is not None and old["source"] == str(user) and _stat(user) == (old["size"], old["mtime_ns"])
        records[rel] = old if same else _record(user)
    stage = temp_sibling(plan.target, kind="part")
    with staged(stage, plan.target.parent, f"linking the files of {name}"):
        for rel, user in plan.links.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).symlink_to(user)
        for unit in plan.units:
            if not (stage / unit).is_symlink():
                (stage / unit).mkdir(parents=True, exist_ok=True)  # a unit without visible files is still a folder
        plan.target.mkdir(parents=True, exist_ok=True)
        for unit in plan.units:
            dest = plan.target / unit
            dest.parent.mkdir(parents=True, exist_ok=True)
            old = temp_sibling(dest, kind="old")
            if dest.exists() or dest.is_symlink():
                dest.rename(old)
            (stage / unit).rename(dest)
            remove_path(old)
        remove_path(stage)
        entries = sorted({PurePosixPath(rel).parts[0] for rel in records} | set(_entries(plan)))
        manifest = {"archive": name, "source": str(plan.where), "entries": entries, "files": records}
        write_text(manifest_path(plan.f, plan.folder), json.dumps(manifest, indent=1, sort_keys=True))
    return f"{name}: unpacked content linked from {plan.where} ({len(plan.links)} files)"


def _entries(plan: _TreePlan) -> list[str]:
    return [PurePosixPath(unit).parts[0] for unit in plan.units]


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _not_a_folder(spec: DatasetSpec, source: Path) -> str:
    if not source.exists():
        return f"--from {source}: no such folder; give the folder that holds the dataset's files"
    from spared.io.readers.common import examples

    names = sorted({PurePosixPath(f.filename).name for f in spec.files})
    if source.name in names:
        return (f"--from {source} is a file, not a folder; it is one of the dataset's files: give the folder that "
                f"holds it, --from {source.parent}")
    return (f"--from {source} is a file, not a folder; give the folder that holds the dataset's files "
            f"({examples(names)})")


def _holds_none(spec: DatasetSpec, source: Path) -> str:
    from spared.io.readers.common import examples

    names = examples(PurePosixPath(f.filename).name for f in spec.files)
    folders = examples(sorted({f.target for f in spec.files if f.unpack}))
    example = next((rest for f in spec.files for rest in own_patterns(spec, f.target)), "")
    layout = examples(f.filename for f in spec.files)
    return (f"{source} holds none of the {len(spec.files)} files of dataset {spec.key!r}. Expected the files "
            f"({names}) in the catalogue's layout ({layout}) or flat"
            + (f", the archives' unpacked folders ({folders})" if folders else "")
            + (f", or an archive's contents (e.g. {example})" if example else "") + ".")


# --- checking what is linked ---------------------------------------------------------------------------------


def verify_links(spec: DatasetSpec, folder: Path, accept_changes: bool = False, rehash: bool = False) -> list[str]:
    """Check the linked content of every archive of ``spec`` against its manifest; returns notes on what was
    re-made or recorded anew.

    A link removed by hand is re-made (its user file is still there); a user file whose size or modification
    time changed is hashed again: the same content updates the record, other content is recorded when
    ``accept_changes`` (``--recheck``, or a ``--from`` given again) and is otherwise a
    :class:`LocalFileChanged`; ``rehash`` (``--recheck``) hashes every file again, whatever its size and time.
    User files that moved or vanished are a :class:`LocalSourceError` naming them and the manifest.
    """
    notes: list[str] = []
    for f in spec.files:
        if not f.unpack:
            continue
        manifest = read_manifest(f, folder)
        if manifest is None:
            continue
        target = folder / f.target
        vanished, changed, dirty = [], [], False
        for rel, rec in manifest["files"].items():
            user, link = Path(rec["source"]), target / rel
            if not user.is_file():
                vanished.append(f"{link} → {user}")
                continue
            if not link.is_symlink() or Path(os.path.realpath(link)) != user:
                if link.exists() and not link.is_symlink():
                    continue  # a file placed there by hand: not ours to replace
                link.parent.mkdir(parents=True, exist_ok=True)
                link.unlink(missing_ok=True)
                link.symlink_to(user)
                notes.append(f"re-made the link {link} → {user} (it had been removed or changed)")
            if not rehash and _stat(user) == (rec["size"], rec["mtime_ns"]):
                continue
            sha = sha256sum(user)
            if sha != rec["sha256"] and not accept_changes:
                changed.append((link, user, sha, rec["sha256"]))
                continue
            if sha != rec["sha256"]:
                check_format(user, PurePosixPath(rel).name)
                notes.append(f"recorded the new content of your file {user} (linked as {link}): sha256 {sha}, "
                             f"was {rec['sha256']}")
            record = _record(user, sha)
            if record != rec:
                manifest["files"][rel] = record
                dirty = True
        if dirty:
            write_text(manifest_path(f, folder), json.dumps(manifest, indent=1, sort_keys=True))
        if vanished:
            shown = "\n  ".join(vanished[:5]) + (f"\n  ... ({len(vanished)} in all)" if len(vanished) > 5 else "")
            raise LocalSourceError(
                f"{len(vanished)} file(s) of dataset {spec.key!r} were linked from a local folder and are gone "
                f"(moved or deleted):\n  {shown}\nPut them back, or run `spared download {spec.key} --from FOLDER` "
                f"with the folder that holds them now (the links are made anew from it). To start over, delete "
                f"{manifest_path(f, folder)} and the folder {target}, then download the dataset again.")
        if changed:
            link, user, sha, recorded = changed[0]
            more = f" ({len(changed)} files changed in all)" if len(changed) > 1 else ""
            raise LocalFileChanged(
                f"your file {user} (linked as {link}) changed since it was linked: sha256 {sha}, {recorded} was "
                f"recorded{more}. If the change is intended, run `spared download {spec.key} --recheck` (or give "
                f"--from again) to record the new content; otherwise restore the file. Processed caches of the "
                f"old content are kept and not reused for the new one.")
    for note in notes:
        _say(f"{spec.key}: {note}")
    return notes
