"""Output file names: the one rule the agent (what it uploads) and the coordinator (what it
stores and serves) both follow.

ComfyUI reports an output as (subfolder, filename, type). Its *original* name is
`subfolder/filename` (just `filename` at the top of ComfyUI's output folder), exactly as ComfyUI
wrote it: any characters, a leading `_`, `-` or `(`, non-ASCII, subfolders; a file of another
type (a preview in `temp`) carries ComfyUI's annotation, `name [temp]`. That is what people see
and what a download is called.

On disk and in URLs the coordinator keeps the *stored name*: the original with every UTF-8 byte
outside `[A-Za-z0-9_.-]` (and a leading `.`) written as `~XX`, two upper-case hex digits. So a
stored name is one path segment (no `/`, no `\\`, no NUL), never `.`, `..` or hidden, needs no URL
quoting, and turns back into its original (`original_of`); distinct originals never share one.
An original whose escaped form would pass `MAX_STORED` characters keeps an escaped prefix and ends
in `~~`, 16 hex digits of the original's SHA-256 and its escaped extension: still safe and
distinct (`~~` never occurs in a plain escaped name), and its original comes from the job's output
list, which carries it.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import quote

from comfyfleet.shared.errors import InvalidInput

MAX_STORED = 200  # characters (all ASCII); leaves room for ".part" under NAME_MAX (255)
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_DOT = ord(".")
_ESCAPED = re.compile(r"(?:[A-Za-z0-9_.-]|~[0-9A-F]{2})+")
# What the coordinator accepts as a stored name: the escaped alphabet, plus space and parentheses
# that names stored by earlier versions may hold. One segment, no leading dot, bounded.
_STORED = re.compile(rf"[A-Za-z0-9_.~() -]{{1,{MAX_STORED}}}")
_EXT = re.compile(r"\.[A-Za-z0-9]{1,10}$")


def original_name(subfolder: str, filename: str, kind: str = "output") -> str:
    """The name ComfyUI gave an output: `subfolder/filename`, or `filename` at the top; a file
    of another folder type (a `temp` preview) is annotated as ComfyUI annotates it: `x [temp]`."""
    name = f"{subfolder}/{filename}" if subfolder else filename
    return name if kind == "output" else f"{name} [{kind}]"


def _escape(text: str, first: bool) -> str:
    out = []
    for i, byte in enumerate(text.encode("utf-8", "surrogatepass")):
        if byte in _SAFE and not (first and i == 0 and byte == _DOT):
            out.append(chr(byte))
        else:
            out.append(f"~{byte:02X}")
    return "".join(out)


def stored_name(original: str) -> str:
    """The safe name an output is uploaded, stored and served under (see the module doc)."""
    if not original:
        raise ValueError("an output name must not be empty")
    escaped = _escape(original, first=True)
    if len(escaped) <= MAX_STORED:
        return escaped
    digest = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    ext = _EXT.search(original)
    tail = f"~~{digest}{ext.group(0) if ext else ''}"
    head = escaped[: MAX_STORED - len(tail)]
    cut = head.rfind("~", len(head) - 2)  # never end inside a ~XX triple
    return (head[:cut] if cut >= 0 else head) + tail


def original_of(stored: str) -> str | None:
    """The original a stored name came from; None for a shortened or foreign name (the job's
    output list then says)."""
    if not _ESCAPED.fullmatch(stored):
        return None
    raw = bytearray()
    i = 0
    while i < len(stored):
        if stored[i] == "~":
            raw.append(int(stored[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(stored[i]))
            i += 1
    try:
        original = raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    return original if original and stored_name(original) == stored else None


def is_safe(name: str) -> bool:
    """A name that is safe as one file in a folder: what the coordinator stores and serves."""
    return bool(_STORED.fullmatch(name)) and not name.startswith(".")


def check_stored(name: str, field: str = "name") -> str:
    """`name` if it is a safe stored name, else InvalidInput naming `field`."""
    if not is_safe(name):
        raise InvalidInput(field, f"invalid output file name {name!r}", "bad_name")
    return name


def content_disposition(original: str, inline: bool = True) -> str:
    """A Content-Disposition header that names the download after its original file name
    (RFC 6266: an ASCII fallback and the exact name in UTF-8)."""
    base = original.rsplit("/", 1)[-1] or "output"
    fallback = re.sub(r"[^A-Za-z0-9._() -]", "_", base)
    exact = quote(base.encode("utf-8", "surrogatepass"), safe="")
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{exact}"
