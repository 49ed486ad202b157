"""The shared run plumbing: output lock, atomic files and folders, temporaries."""

from __future__ import annotations

import pytest

from pipeline.runtime import (
    TMP_MARK,
    OutputBusyError,
    atomic_dir,
    atomic_path,
    atomic_write_text,
    output_lock,
    remove_temporaries,
)


def test_atomic_path_publishes_only_a_finished_file(tmp_path):
    final = tmp_path / "sub" / "out.npz"
    atomic_write_text(final, "old")
    with pytest.raises(KeyError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            assert tmp.name.startswith(f".out.npz{TMP_MARK}") and tmp.name.endswith(".npz")
            raise KeyError("killed")
    assert final.read_text() == "old" and sorted(p.name for p in final.parent.iterdir()) == ["out.npz"]
    with atomic_path(final) as tmp:
        tmp.write_text("new")
        assert final.read_text() == "old"  # not visible before the block ends
    assert final.read_text() == "new"


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path):
    final = tmp_path / "store.zarr"
    with pytest.raises(KeyError):
        with atomic_dir(final) as tmp:
            (tmp / "zarr.json").write_text("{}")
            raise KeyError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "a").mkdir()
        (tmp / "a" / "b").write_text("x")
        assert not final.exists()
    assert (final / "a" / "b").read_text() == "x"
    assert list(tmp_path.iterdir()) == [final]


def test_remove_temporaries_removes_files_and_folders_of_that_output_only(tmp_path):
    final = tmp_path / "store.zarr"
    (tmp_path / f".store.zarr{TMP_MARK}0123abcd.zarr").mkdir()
    (tmp_path / f".store.zarr{TMP_MARK}0123abcd.zarr" / "chunk").write_bytes(b"x")
    (tmp_path / f".store.zarr{TMP_MARK}4567abcd").write_bytes(b"x")
    other = tmp_path / f".other.zarr{TMP_MARK}0123abcd"
    other.write_bytes(b"x")
    remove_temporaries(final)
    assert list(tmp_path.iterdir()) == [other]


def test_output_lock_refuses_a_second_writer_and_is_released(tmp_path):
    out = tmp_path / "cache.h5"
    with output_lock(out, "embed-ct"):
        with pytest.raises(OutputBusyError, match=f"{out} is being written by another embed-ct run"):
            with output_lock(out, "embed-ct"):
                pass
    with output_lock(out, "embed-ct"):  # released
        pass


def test_a_later_setup_keeps_the_verbose_level_of_the_command_line(capsys):
    import logging

    from pipeline.runtime import setup_logging

    log = logging.getLogger("pipeline.test_runtime")
    try:
        setup_logging(verbose=True)  # the root command's --verbose
        setup_logging()  # a command that sets up logging again, without an opinion
        log.debug("detail")
        assert capsys.readouterr().err == "detail\n"
        setup_logging(verbose=False)
        log.debug("hidden")
        log.info("shown")
        assert capsys.readouterr().err == "shown\n"
    finally:
        setup_logging(verbose=False)


def test_refuse_non_folder_leaves_files_and_links_alone(tmp_path):
    from pipeline.runtime import NotAFolderError, refuse_non_folder

    refuse_non_folder(tmp_path / "new", "a Zarr store")  # absent: fine
    (tmp_path / "folder").mkdir()
    refuse_non_folder(tmp_path / "folder", "a Zarr store")  # a folder: fine
    (tmp_path / "file").write_text("precious")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("file", "dangling"):
        with pytest.raises(NotAFolderError, match=f"{name} exists and is not a folder \\(a Zarr store is one\\)"):
            refuse_non_folder(tmp_path / name, "a Zarr store")
    assert (tmp_path / "file").read_text() == "precious"
