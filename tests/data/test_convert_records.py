"""The converter never drops or rewrites a record silently: duplicates, caption-less first records,
a second converter on one output, damaged tars, I/O errors and a SIGKILL with worker processes."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jaxsup.data.convert import cli as convert
from jaxsup.errors import DataError

from helpers import ROOT
from test_convert import GOOD, caption, image_bytes, read_all, write_tar

CLI = [sys.executable, "-m", "jaxsup.data.convert", "webdataset"]


def one_tar(tmp_path, records) -> str:
    src = tmp_path / "wds"
    src.mkdir()
    write_tar(str(src / "00000.tar"), records)
    return str(src)


def error_lines(capsys) -> list[str]:
    """stderr without the progress bar's lines; a traceback would show here."""
    err = capsys.readouterr().err.replace("\r", "\n")
    return [line for line in err.splitlines() if line.strip() and not line.startswith("convert: ")]


def test_a_duplicate_key_is_counted_the_first_kept_and_strict_stops(tmp_path):
    src = one_tar(tmp_path, [("k0", {"jpg": GOOD, "txt": caption("first")}), ("k1", {"jpg": GOOD, "txt": caption("b")}),
                             ("k0", {"jpg": GOOD, "txt": caption("second")})])
    info = convert.convert("webdataset", src, str(tmp_path / "out"))
    assert info["num_examples"] == 2 and info["counts"] == {"skipped/duplicate_key": 1}
    kept = {r["key"]: r["caption"] for r in read_all(str(tmp_path / "out"))}
    assert kept == {"k0": "first", "k1": "b"}
    with pytest.raises(DataError, match=r"record 'k0': duplicate key"):
        convert.convert("webdataset", src, str(tmp_path / "strict"), options=convert.Options(strict=True))


def test_a_repeated_member_in_one_record_is_a_duplicate_too(tmp_path):
    src = one_tar(tmp_path, [("k0", {"jpg": GOOD, "txt": caption("a")}), ("k0", {"jpg": GOOD, "txt": caption("b")})])
    info = convert.convert("webdataset", src, str(tmp_path / "out"))
    assert info["num_examples"] == 1 and info["counts"] == {"skipped/duplicate_key": 1}


def test_a_first_record_without_caption_does_not_drop_the_captioned_ones(tmp_path):
    src = one_tar(tmp_path, [("k0", {"jpg": GOOD}), ("k1", {"jpg": GOOD, "txt": caption("one")}),
                             ("k2", {"jpg": GOOD, "txt": caption("two")})])
    info = convert.convert("webdataset", src, str(tmp_path / "out"))
    assert info["features"] == ["caption", "image", "key"] and info["num_examples"] == 2
    assert info["counts"] == {"skipped/missing_caption": 1}


@pytest.mark.parametrize("content,reason", [(b"", "0 bytes"), (b"this is not a tar archive" * 40, "not a readable tar")])
def test_an_empty_or_non_tar_file_is_one_line_naming_it(tmp_path, capsys, content, reason):
    src = tmp_path / "wds"
    src.mkdir()
    (src / "bad.tar").write_bytes(content)
    assert convert.main(["webdataset", str(src), "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and str(src / "bad.tar") in lines[0] and reason in lines[0], lines


def test_disk_full_is_one_line_naming_the_file_and_keeps_finished_shards(tmp_path, capsys, monkeypatch):
    src = tmp_path / "wds"
    src.mkdir()
    for t in range(2):
        write_tar(str(src / f"{t}.tar"), [(f"k{t}", {"jpg": GOOD, "txt": caption("c")})])
    real_write_json = convert.write_json

    def full_after_first_shard(path, value):
        if path.endswith("shard-00001.json"):
            raise OSError(errno.ENOSPC, "No space left on device", path + ".tmp")
        return real_write_json(path, value)

    monkeypatch.setattr(convert, "write_json", full_after_first_shard)
    out = tmp_path / "out"
    assert convert.main(["webdataset", str(src), "--out", str(out), "--workers", "1"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "shard-00001.json.tmp: No space left on device" in lines[0], lines
    assert (out / "train" / "shard-00000.json").exists()  # what finished is kept for the rerun


def test_a_second_converter_on_one_output_stops_naming_the_holder(tmp_path, capsys):
    src = one_tar(tmp_path, [("k0", {"jpg": GOOD, "txt": caption("a")})])
    split_dir = tmp_path / "out" / "train"
    split_dir.mkdir(parents=True)
    hold = ("import sys, time; from jaxsup.workdir import WorkdirLock; WorkdirLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(split_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert convert.main(["webdataset", src, "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
        lines = error_lines(capsys)
        assert len(lines) == 1 and f"Output folder {split_dir} is in use by PID {holder.pid}" in lines[0], lines
        assert sorted(os.listdir(split_dir)) == ["lock"]  # nothing of the holder's was touched
    finally:
        holder.kill()


def _children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_with_workers_leaves_no_process_and_a_rerun_equals_a_straight_run(tmp_path):
    src = tmp_path / "wds"
    src.mkdir()
    big = image_bytes(500, 375, seed=7)
    for t in range(6):
        write_tar(str(src / f"{t:05d}.tar"), [(f"{t}_{k}", {"jpg": big, "txt": caption(f"t{t} k{k}")})
                                               for k in range(30)])
    straight = convert.convert("webdataset", str(src), str(tmp_path / "straight"))
    out = tmp_path / "killed"
    command = [*CLI, str(src), "--out", str(out), "--workers", "2", "--resize", "64"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers: list[int] = []
    deadline = time.time() + 120
    while len(workers) < 2 and proc.poll() is None and time.time() < deadline:
        workers = [p for p in _children(proc.pid) if "spawn" in open(f"/proc/{p}/cmdline").read()]
        time.sleep(0.02)
    assert len(workers) >= 2, "the workers never started"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    deadline = time.time() + 10
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not [p for p in workers if _alive(p)], "worker processes outlived their SIGKILLed parent"
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    again = convert.convert("webdataset", str(src), str(tmp_path / "straight64"), options=convert.Options(resize=64))
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["num_examples"] == again["num_examples"] == 180
    assert read_all(str(out)) == read_all(str(tmp_path / "straight64"))
    assert straight["num_examples"] == 180
