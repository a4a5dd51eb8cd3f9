"""Can any agent of the fleet run a workflow? (the 422 at submission) — pure."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping

from comfyfleet.shared.errors import InvalidInput

Inventory = tuple[frozenset[str], frozenset[str] | None]  # (models, node classes or unknown)
_INPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ ()-]{0,127}$")


def fleet_gap(
    models: Iterable[str], classes: Iterable[str], inventories: Iterable[Inventory]
) -> str | None:
    """None when some agent has every model file and node class the workflow needs, or when no
    agent reported an inventory yet (the job waits for one); else what is missing, naming the
    items no agent has (or, when each exists somewhere but no agent has all, every item)."""
    want_m, want_c = sorted(set(models)), sorted(set(classes))
    known = [(m, c) for m, c in inventories if c is not None]
    if not known:
        return None
    for have_m, have_c in known:
        if have_c is not None and have_m.issuperset(want_m) and have_c.issuperset(want_c):
            return None
    nowhere_m = [x for x in want_m if all(x not in m for m, _ in known)]
    nowhere_c = [x for x in want_c if all(c is not None and x not in c for _, c in known)]
    if nowhere_m or nowhere_c:
        lead = "no agent in the fleet has"
    else:
        nowhere_m, nowhere_c = want_m, want_c
        lead = "no agent in the fleet has all of"
    parts = ([f"model files {', '.join(nowhere_m)}"] if nowhere_m else []) + (
        [f"node classes {', '.join(nowhere_c)}"] if nowhere_c else []
    )
    return f"{lead} {' and '.join(parts)}"


def decode_inputs(inputs: Mapping[str, str], max_bytes: int) -> dict[str, bytes]:
    """Input files from a job spec: safe names, valid base64, at most `max_bytes` in all."""
    out: dict[str, bytes] = {}
    total = 0
    for name, b64 in inputs.items():
        field = f"inputs.{name}"
        if not _INPUT_NAME.match(name) or ".." in name:
            raise InvalidInput(
                field,
                "file name must be 1-128 letters, digits, '._ ()-' and "
                "start with a letter or digit",
                "bad_name",
            )
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(
                field, "must be base64 (RFC 4648, no line breaks)", "bad_base64"
            ) from None
        total += len(data)
        if total > max_bytes:
            raise InvalidInput(
                "inputs", f"input files exceed {max_bytes} bytes in all", "too_large"
            )
        out[name] = data
    return out
