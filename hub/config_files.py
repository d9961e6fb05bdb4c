"""Loading ops-edited YAML into validated models, reporting every problem at once.

Ops people edit these files by hand; one bad key must produce a message that
names the file, the key and the reason, together with every other problem in
the same file, so a fix is one edit, not a loop of restarts. Problems read
``path: key: reason``; `with_line` turns one into ``path:line: key: reason``,
the form editors and CI annotate (`touchhub mappings check` prints that).

A file saved in another encoding (Latin-1 / Windows-1252 is what many
editors on Windows default to) is such a problem too, at the line of its
first stray byte: as a traceback it would escape the hot reload, which then
ignores the edit without a word (`utf8_text`, `not_utf8`).

Every file is read with `ConfigLoader`, YAML as ops mean it rather than as
PyYAML reads it: a key written twice is refused at its line (PyYAML keeps
the last silently, so a second `Product Viewed:` further down a table undid
the first), an unquoted date (`campaign_start: 2026-11-01`) is ISO text,
since a `datetime.date` reaches no JSON column, and an unquoted time of day
(`store_opens: 10:30`) is text too: YAML 1.1 reads it as the base-60 number
630, which no one writing it means (YAML 1.2, which editors lint with, dropped
base 60). Likewise only true and false are booleans (`country: NO` is Norway,
`answer: yes` the text "yes"), and `1e3` is the number 1000, as in YAML 1.2
and the JSON Schemas editors check the files against. A file may begin with a
byte-order mark, as Windows tools save it.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Hashable, Sequence
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yaml.constructor import ConstructorError
from pydantic import BaseModel, ValidationError

from hub.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


class DuplicateKeyError(ConstructorError):
    """A mapping names the same key twice."""


_STR, _BOOL, _FLOAT = "tag:yaml.org,2002:str", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
_INT = "tag:yaml.org,2002:int"
_BASE_60_CAPABLE = frozenset({_INT, _FLOAT})
_BOOLEANS = frozenset({"true", "false"})
# YAML 1.2's integers (the core schema; `1_000` kept, as ops mean it): 1.1 also read `01234` as the octal 668 (a zip
# code) and `0b11` as 3.
_CORE_INT = re.compile(r"[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F]+")
# The floats of YAML 1.2 (core schema) that PyYAML's 1.1 reads as text: those with an exponent but no dot (`1e3`)
# or an unsigned one (`1.5e3`).
_EXPONENT_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+")


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys and reading timestamps and times of day as text (see the
    module doc)."""

    def resolve(self, kind: type[yaml.Node], value: str, implicit: tuple[bool, bool]) -> str:
        """A plain scalar as YAML 1.2 reads it, where PyYAML's 1.1 differs in ways no one writing it means:
        base 60 (`10:30`, `1:30.5`) is text; `yes`/`no`/`on`/`off` are text (`value: [NO, SE, DK]` is three country
        codes, not false and two codes), only true and false being booleans; `1e3` is a number, not text a
        `gt` never compares. Quoted scalars and explicit tags (`!!int`) are not resolved here: they mean what
        they say."""
        tag: str = super().resolve(kind, value, implicit)
        return _as_yaml_1_2(tag, value) if kind is yaml.ScalarNode and implicit[0] else tag

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        self._refuse_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)

    def _refuse_duplicate_keys(self, node: yaml.MappingNode) -> None:
        """Before `<<` merges are flattened: a key given beside a merge overrides the merged one on purpose."""
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in first_lines:
                raise DuplicateKeyError(
                    None, None, f"{key!r} is given twice (first at line {first_lines[key]}); YAML would keep only "
                    "the last one: remove or rename one", key_node.start_mark,
                )
            first_lines[key] = key_node.start_mark.line + 1

    def construct_iso_text(self, node: yaml.ScalarNode) -> str:
        found: date = self.construct_yaml_timestamp(node)
        return found.isoformat()


ConfigLoader.add_constructor("tag:yaml.org,2002:timestamp", ConfigLoader.construct_iso_text)


def _as_yaml_1_2(tag: str, plain: str) -> str:
    """The tag YAML 1.2 gives the plain scalar PyYAML's 1.1 resolver tagged `tag`."""
    if tag in _BASE_60_CAPABLE and ":" in plain:
        return _STR
    if tag == _BOOL and plain.lower() not in _BOOLEANS:
        return _STR
    if tag == _INT and not _CORE_INT.fullmatch(plain):
        return _STR
    if tag == _STR and _EXPONENT_FLOAT.fullmatch(plain):
        return _FLOAT
    return tag


def load_model(path: Path, model: type[ModelT]) -> ModelT:
    text = config_text(path)
    try:
        document = yaml.load(text, Loader=ConfigLoader)
        return model.model_validate(document or {})
    except DuplicateKeyError as exc:
        assert exc.problem_mark is not None
        raise ConfigError(f"{path}:{exc.problem_mark.line + 1}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise ConfigError([_describe(path, error, document) for error in exc.errors()]) from None
    except RecursionError:  # PyYAML builds nested lists and maps recursively: a paste gone wrong was a traceback
        raise too_deep(path) from None


def too_deep(path: Path) -> ConfigError:
    """A file nested past what the parsers read (they recurse: a RecursionError), as ops can fix it."""
    return ConfigError(f"{path}: nested too deeply to read: lists or maps hundreds of levels inside each other; "
                       "look for brackets pasted by mistake")


def config_text(path: Path) -> str:
    """The text of an ops-edited file, a byte-order mark left out; a file missing, unreadable or not UTF-8 is a
    ConfigError saying what to do, so start-up lists it with the rest and a hot reload refuses it."""
    try:
        return utf8_text(path, "utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; create it or point HUB_MAPPINGS_DIR at the right folder") from None
    except OSError as exc:  # a folder in its place, no read permission: a problem of the file like any other
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc}); check the file and its permissions") from None


def problems_of(error: Exception) -> list[str]:
    """What a hot reload logs of a refused edit: a ConfigError's problems, or the failure it did not foresee."""
    return error.problems if isinstance(error, ConfigError) else [f"{type(error).__name__}: {error}"]


def utf8_text(path: Path, encoding: str = "utf-8") -> str:
    """The file's text (`encoding` is a UTF-8 codec, e.g. "utf-8-sig"); ConfigError naming the line of the
    first byte that is not UTF-8, since ops fix that in an editor, not in a traceback."""
    try:
        return path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise ConfigError(not_utf8(path, exc)) from None


def not_utf8(path: Path, error: UnicodeDecodeError) -> str:
    """``path:line: not UTF-8 ...`` for a file whose whole content `error` was raised decoding."""
    before = error.object[: error.start]
    line, column = before.count(b"\n") + 1, error.start - before.rfind(b"\n")
    return (
        f"{path}:{line}: not UTF-8 (byte {error.object[error.start]:#04x} at column {column}, e.g. an accented "
        "letter saved as Latin-1 or Windows-1252); save the file as UTF-8"
    )


def _describe(path: Path, error: Any, document: Any) -> str:
    key = ".".join(str(part) for part in _in_document(error["loc"], document)) or "(top level)"
    return f"{path}: {key}: {error['msg']}"


def _in_document(loc: Sequence[Any], document: Any) -> list[Any]:
    """`loc` as keys of the file: without the tags of tagged unions, which pydantic adds to it.

    A rule's `when: {count: {...}}` fails at ``when.count.count.within``: the
    first `count` names the union's member, not a key. A part is such a tag
    when the part after it is not found below it but is found beside it, or
    when it is the last part and stands below a value that has no keys (a
    mapping's `identifiers.phone.expression`: the member a text value is tried as).
    """
    keys: list[Any] = []
    node = document
    for n, part in enumerate(loc):
        below = _step(node, part)
        following = loc[n + 1] if n + 1 < len(loc) else None
        if following is None and _is_scalar(node):
            continue  # a tag
        if following is not None and _step(below, following) is _MISSING and _step(node, following) is not _MISSING:
            continue  # a tag
        keys.append(part)
        node = below
    return keys


_MISSING = object()


def _is_scalar(node: Any) -> bool:
    return node is None or isinstance(node, (str, int, float, bool))


def _step(node: Any, part: Any) -> Any:
    if isinstance(node, dict) and part in node:
        return node[part]
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return _MISSING


def with_line(problem: str, path: Path) -> str:
    """``path: a.0.b: reason`` -> ``path:LINE: a.0.b: reason``, LINE being where key a.0.b is in the file."""
    prefix = f"{path}: "
    if not problem.startswith(prefix):
        return problem
    key = problem[len(prefix):].partition(": ")[0]
    root = yaml_tree(path)
    if root is None:
        return problem
    parts = [int(part) if part.isdigit() else part for part in key.split(".")]
    return f"{path}:{line_of(root, parts)}: {problem[len(prefix):]}"


def yaml_tree(path: Path) -> yaml.Node | None:
    """The file's YAML nodes, which know their lines; None when it cannot be read or parsed (or is empty): its
    problems are then said without a line rather than not at all."""
    try:
        return yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return None


def line_of(root: yaml.Node | None, loc: Sequence[Any]) -> int:
    """1-based line of the deepest key along `loc` that exists (the parent's when a key is missing).

    A key holding dots (the event `invoice.paid`, the field `properties.plan`) arrives split when `loc` is read
    back from a problem's text (`events.invoice.paid.stage`), so successive parts are tried joined by dots too;
    the reading that follows `loc` furthest wins, as `invoice` and `invoice.paid` may both be keys.
    """
    if root is None:
        return 1
    return _deepest_line(root, loc)[1] or root.start_mark.line + 1


def _deepest_line(node: yaml.Node, loc: Sequence[Any]) -> tuple[int, int | None]:
    """(how many parts of `loc` were found below `node`, the line of the last one found)."""
    best: tuple[int, int | None] = (0, None)
    for width in range(1, len(loc) + 1):
        found = child_of(node, loc[0] if width == 1 else ".".join(str(part) for part in loc[:width]))
        if found is None:
            continue
        marker, below = found
        followed, line = _deepest_line(below, loc[width:])
        if width + followed > best[0]:
            best = (width + followed, line or marker.start_mark.line + 1)
        if best[0] == len(loc):
            break
    return best


def child_of(node: yaml.Node | None, part: Any) -> tuple[yaml.Node, yaml.Node] | None:
    """(node whose line to report, node to descend into) for one step of a validation error's path."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == str(part):
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part], node.value[part]
    return None


def content_stamp(path: Path) -> tuple[int, bytes] | None:
    """What a reload compares to see a saved edit: the file's mtime and a digest of its content; None when it
    cannot be read (loading it then says why). (mtime, size) missed a save of equal length within the file
    system's mtime granularity (a whole second on some); the mtime stays in, so a save of the same bytes is still
    a save (after fixing a template a rule file refers to, saving the rule file again retries it). A config file
    is a few kilobytes, read once per recheck."""
    try:
        return path.stat().st_mtime_ns, hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
    except OSError:
        return None


# Past this after a file's mtime, a save of it moves the mtime: the coarsest tick a file system keeps is FAT's 2 s,
# with room for a file server's clock a few seconds behind ours.
_TICK_NS = 10_000_000_000


class Unchanged:
    """Whether a file is as read, by `content_stamp` (mtime and digest), for what is looked at far more often
    than it is saved: Jinja's `uptodate` for a template (on each `get_template` and each render of a file a
    template extends), the journey map (on each inbound request). By mtime alone, Jinja's, a second save within
    one mtime tick (an editor's and its formatter's, the whole file after a half-written one) was never loaded.

    Each call costs a `stat`: the file is read only while it was last looked at within a tick of its mtime,
    since only then may a later save leave the mtime as it was.
    """

    __slots__ = ("path", "stamp", "settled")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp, self.settled = _looked_at(path, first=True)

    def __call__(self) -> bool:
        if self.settled:
            return _mtime(self.path) == (self.stamp[0] if self.stamp else None)
        stamp, settled = _looked_at(self.path)
        self.settled = settled and stamp == self.stamp  # from here on a save moves the mtime
        return stamp == self.stamp


def _looked_at(path: Path, first: bool = False) -> tuple[tuple[int, bytes] | None, bool]:
    """The file's stamp (None while there is no file to read), and whether it was taken over a tick after the
    file's mtime, so that any later save moves the mtime. At the `first` look at a file so settled its content
    is not read (the digest left empty): looks then compare the mtime alone, and the loader reads it anyway."""
    looked = time.time_ns()  # before reading: a save during the read may share the tick of this
    mtime = _mtime(path) if first else None
    if mtime is not None and looked - mtime > _TICK_NS:
        return (mtime, b""), True
    stamp = content_stamp(path)
    return stamp, stamp is None or looked - stamp[0] > _TICK_NS


def _mtime(path: Path) -> int | None:
    """The file's mtime; None while there is no file to read."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
