"""One rule for output names (shared/names.py): any name ComfyUI can write gets a stored name
that is safe on disk, distinct within a job, and leads back to the original."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.shared import names
from comfyfleet.shared import protocol as p
from comfyfleet.shared.errors import InvalidInput

pytestmark = pytest.mark.timeout(120)

# What a filesystem lets ComfyUI write: a segment is anything without "/" or NUL, up to 255
# bytes; ComfyUI adds "_00001_.png" to the prefix. Subfolders come as "a/b" (dirname of the
# prefix). Lone surrogates stand for names a JSON answer may carry but UTF-8 cannot.
segment = st.text(
    st.characters(blacklist_characters="/\x00", blacklist_categories=()), min_size=1, max_size=90
)
subfolder = st.lists(segment, max_size=3).map("/".join)
comfy_names = st.tuples(subfolder, segment.map(lambda s: f"{s}_00001_.png") | segment)


def test_the_names_from_the_issue_keep_or_escape_and_come_back() -> None:
    for original in ["_draft_00001_.png", "-x_00001_.png", "(v2)_00001_.png", "猫_00001_.png"]:
        stored = names.stored_name(original)
        assert names.is_safe(stored)
        assert names.original_of(stored) == original
    assert names.stored_name("ComfyUI_00001_.png") == "ComfyUI_00001_.png"  # common case as-is
    assert names.stored_name("(v2)_00001_.png") == "~28v2~29_00001_.png"
    assert names.stored_name("sub/dir/x.png") == "sub~2Fdir~2Fx.png"
    assert names.stored_name("..") == "~2E."
    assert names.stored_name(".hidden") == "~2Ehidden"


@given(comfy_names)
def test_stored_name_is_always_safe(pair: tuple[str, str]) -> None:
    stored = names.stored_name(names.original_name(*pair))
    assert names.is_safe(stored)
    assert names.check_stored(stored) == stored
    assert "/" not in stored and "\\" not in stored and "\x00" not in stored
    assert stored not in (".", "..") and not stored.startswith(".")
    assert 1 <= len(stored) <= names.MAX_STORED
    assert len((stored + ".part").encode()) <= 255  # the coordinator's part file fits too
    assert stored.isascii()


@given(comfy_names)
def test_original_comes_back(pair: tuple[str, str]) -> None:
    original = names.original_name(*pair)
    stored = names.stored_name(original)
    if "~~" not in stored:
        assert names.original_of(stored) == original
    else:  # shortened: the manifest carries the original, checked against the stored name
        assert names.original_of(stored) is None
    body = {"name": stored, "original": original, "size": 1, "sha256": "0" * 64}
    assert msgspec.convert(body, p.OutputFile).original == original


@given(st.lists(comfy_names, min_size=2, max_size=12, unique=True))
def test_distinct_originals_never_share_a_stored_name(pairs: list[tuple[str, str]]) -> None:
    originals = {names.original_name(*pair) for pair in pairs}
    stored = {names.stored_name(o) for o in originals}
    assert len(stored) == len(originals)


@given(segment, segment)
def test_long_names_shortened_differ_by_their_digest(a: str, b: str) -> None:
    long_a, long_b = "x" * 300 + a, "x" * 300 + b
    if long_a != long_b:
        assert names.stored_name(long_a) != names.stored_name(long_b)
    assert "~~" in names.stored_name(long_a)


@pytest.mark.parametrize(
    "bad", ["", ".", "..", "../etc", "a/b", "a\\b", ".part", "a\x00b", "x" * 201, "猫.png"]
)
def test_unsafe_names_are_refused_naming_the_field(bad: str) -> None:
    assert not names.is_safe(bad)
    with pytest.raises(InvalidInput) as err:
        names.check_stored(bad, "name")
    assert err.value.field == "name"


def test_names_stored_by_earlier_versions_are_still_served() -> None:
    assert names.is_safe("2_ComfyUI_00001_ (copy).png")


def test_manifest_refuses_a_name_that_is_not_the_stored_form_of_its_original() -> None:
    body = {"name": "draft.png", "size": 1, "sha256": "0" * 64, "original": "(draft).png"}
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(body, p.OutputFile)
    ok = msgspec.convert({**body, "name": names.stored_name("(draft).png")}, p.OutputFile)
    assert ok.original == "(draft).png"


def test_download_is_named_after_the_original() -> None:
    header = names.content_disposition("sub/猫 (v2)_00001_.png")
    assert header.startswith("inline; ")
    assert "filename*=UTF-8''%E7%8C%AB%20%28v2%29_00001_.png" in header
    assert 'filename="_ (v2)_00001_.png"' in header


def test_a_preview_and_an_output_of_the_same_name_stay_apart() -> None:
    shown = names.original_name("", "ComfyUI_00001_.png", "temp")
    assert shown == "ComfyUI_00001_.png [temp]"
    assert names.stored_name(shown) != names.stored_name(names.original_name("", shown[:-7]))
    ref = p.ComfyRef(filename="ComfyUI_00001_.png", subfolder="", type="temp")
    ok = p.OutputFile(
        name=names.stored_name(shown), original=shown, size=1, sha256="0" * 64, comfy_ref=ref
    )
    assert ok.comfy_ref == ref
    with pytest.raises(msgspec.ValidationError):  # the two names of one file must agree
        msgspec.convert(
            {**msgspec.to_builtins(ok), "comfy_ref": {"filename": "other.png"}}, p.OutputFile
        )
