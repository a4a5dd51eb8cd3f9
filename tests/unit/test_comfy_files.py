"""What the agent removes from ComfyUI's folders: only what its jobs provably created."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.agent import comfy_files as cf
from comfyfleet.agent.comfyui.events import OutputRef


def test_created_outputs_are_the_executed_nodes_output_files_only() -> None:
    refs = [
        OutputRef("a_00001_.png", "", "output", "3"),
        OutputRef("b_00001_.png", "sub", "output", "4"),
        OutputRef("old_00001_.png", "", "output", "5"),  # node 5 came from ComfyUI's cache
        OutputRef("p_00001_.png", "", "temp", "6"),  # a preview: not ours to remove here
        OutputRef("a_00001_.png", "", "output", "3"),  # reported twice
    ]
    assert cf.created_outputs(refs, cached=["5"]) == ("a_00001_.png", "sub/b_00001_.png")


def test_output_nodes_get_a_per_attempt_cache_key_and_nothing_else_changes() -> None:
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    out = cf.uncached_outputs(graph, "run-1")
    assert out["1"] == graph["1"]
    assert out["2"]["inputs"] == {"images": ["1", 0], "filename_prefix": "x", cf.RUN_INPUT: "run-1"}
    assert cf.RUN_INPUT not in graph["2"]["inputs"]  # not changed in place


@given(st.text(min_size=1, max_size=30))
def test_inside_never_leaves_the_folder(rel: str) -> None:
    root = Path("/srv/comfy/output")
    path = cf.inside(root, rel)
    if path is not None:
        assert path.resolve().is_relative_to(root.resolve())


def test_inside_refuses_traversal_and_absolute_paths() -> None:
    root = Path("/srv/comfy/output")
    assert cf.inside(root, "../input/x.png") is None
    assert cf.inside(root, "/etc/passwd") is None
    assert cf.inside(root, "") is None
    assert cf.inside(root, "sub/x.png") == root / "sub/x.png"


def _folders(tmp_path: Path) -> cf.ComfyFolders:
    out, inp = tmp_path / "output", tmp_path / "input"
    (out / "sub").mkdir(parents=True)
    inp.mkdir()
    return cf.ComfyFolders(output=out, input=inp)


def test_release_removes_what_the_ledger_lists_and_nothing_else(tmp_path: Path) -> None:
    folders = _folders(tmp_path)
    assert folders.output is not None and folders.input is not None
    ours_out = folders.output / "sub" / "a_00001_.png"
    ours_in = folders.input / cf.input_name("j1", 1, "photo.png")
    theirs_out = folders.output / "someone_else_00001_.png"
    theirs_in = folders.input / "photo.png"  # same bytes uploaded by someone else
    for f in (ours_out, ours_in, theirs_out, theirs_in):
        f.write_bytes(b"x")
    files = cf.ComfyFiles(folders, tmp_path / "ledger")
    files.record("j1", 1, cf.Created(inputs=(ours_in.name,)))
    files.record("j1", 1, cf.Created(outputs=("sub/a_00001_.png", "../input/photo.png")))
    # an input entry without the agent's own prefix is never removed, whatever the ledger says
    files.record("j1", 1, cf.Created(inputs=("photo.png",)))
    assert files.release("j1", 1) == 2
    assert not ours_out.exists() and not ours_in.exists()
    assert theirs_out.exists() and theirs_in.exists()
    assert not list((tmp_path / "ledger").iterdir())
    assert files.release("j1", 1) == 0  # twice is harmless


def test_sweep_at_start_removes_what_attempts_no_longer_held_left(tmp_path: Path) -> None:
    folders = _folders(tmp_path)
    assert folders.output is not None
    for name in ("left_00001_.png", "held_00001_.png", "reported_00001_.png"):
        (folders.output / name).write_bytes(b"x")
    files = cf.ComfyFiles(folders, tmp_path / "ledger")
    files.record("gone", 1, cf.Created(outputs=("left_00001_.png",)))
    files.record("held", 2, cf.Created(outputs=("held_00001_.png",)))
    files.record("rep-ort", 1, cf.Created(outputs=("reported_00001_.png",)))
    (tmp_path / "ledger" / "junk.tmp").write_text("{")
    removed = cf.sweep(files, keep={("held", 2), ("rep-ort", 1)})
    assert removed == 1
    assert not (folders.output / "left_00001_.png").exists()
    assert (folders.output / "held_00001_.png").exists()
    assert (folders.output / "reported_00001_.png").exists()
    assert sorted(p.name for p in (tmp_path / "ledger").iterdir()) == [
        "held-2.json",
        "rep-ort-1.json",
    ]


def test_an_unreadable_ledger_entry_removes_nothing(tmp_path: Path) -> None:
    folders = _folders(tmp_path)
    assert folders.output is not None
    (folders.output / "x.png").write_bytes(b"x")
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    (ledger / "j-1.json").write_text("not json")
    files = cf.ComfyFiles(folders, ledger)
    assert cf.sweep(files, keep=set()) == 0
    assert (folders.output / "x.png").exists()


def test_the_folders_of_each_instance_come_from_one_rule(tmp_path: Path) -> None:
    from comfyfleet.agent.config import AgentConfig, InstanceConfig

    base = {"coordinator_url": "http://c", "agent_id": "a", "data_dir": tmp_path}
    external = AgentConfig(
        **base,
        comfyui_urls=("http://x", "http://y"),
        comfyui_output_dirs=(Path("/x/out"), Path("/y/out")),
    )
    assert external.folders_of(1) == cf.ComfyFolders(output=Path("/y/out"))
    assert AgentConfig(**base, comfyui_urls=("http://x",)).folders_of(0) == cf.ComfyFolders()
    docker = AgentConfig(
        **base,
        comfyui_mode="docker",
        docker_output_dir=Path("/srv/out"),
        docker_input_dir=Path("/srv/in"),
        instances=(InstanceConfig(), InstanceConfig(output_dir=Path("/own/out"))),
    )
    assert docker.folders_of(0) == cf.ComfyFolders(Path("/srv/out"), Path("/srv/in"))
    assert docker.folders_of(1) == cf.ComfyFolders(Path("/own/out"), Path("/srv/in"))
    process = AgentConfig(**base, comfyui_mode="process", docker_output_dir=Path("/srv/out"))
    assert process.folders_of(0) == cf.ComfyFolders()  # a process's folders: only when told
