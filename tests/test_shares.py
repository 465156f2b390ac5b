"""Tests for mbt.peer.shares (ShareStore persistence) and mbt.peer.storage
(bitfields and PieceFile): plain objects on real files in tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbt.manifest import PIECE_SIZE, Manifest, hash_file
from mbt.peer.shares import DownloadRecord, DownloadState, Share, ShareStore
from mbt.peer.storage import PieceFile, bitfield_hex, parse_bitfield

SIZE = 2 * PIECE_SIZE + 777        # three pieces, the last one short


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A three-piece file and its manifest: (path, content, manifest)."""
    path = tmp_path_factory.mktemp("src") / "f.bin"
    data = random.Random(3).randbytes(SIZE)
    path.write_bytes(data)
    return str(path), data, hash_file(str(path))


def piece(data: bytes, i: int) -> bytes:
    return data[i * PIECE_SIZE:(i + 1) * PIECE_SIZE]


def make_share(tmp_path, source, group="club", name="f.bin") -> Share:
    path, _, manifest = source
    st_ = os.stat(path)
    return Share(group=group, name=name, path=path, manifest=manifest.to_dict(),
                 size=st_.st_size, mtime_ns=st_.st_mtime_ns)


def make_record(source, group="club", name="f.bin", dest="/tmp/x/f.bin", have=(0, 2)) -> DownloadRecord:
    return DownloadRecord(group=group, name=name, dest=dest, manifest=source[2].to_dict(), have=list(have))


# -- ShareStore ---------------------------------------------------------------

def test_empty_state_dir_starts_empty(tmp_path):
    store = ShareStore(str(tmp_path))
    assert store.shares == {} and store.downloads == {}
    assert os.listdir(tmp_path) == []       # nothing written until something changes


def test_shares_round_trip_through_disk(tmp_path, source):
    store = ShareStore(str(tmp_path))
    a = make_share(tmp_path, source, "club", "f.bin")
    b = make_share(tmp_path, source, "other", "g.bin")
    store.put_share(a)
    store.put_share(b)
    again = ShareStore(str(tmp_path))
    assert again.shares == {("club", "f.bin"): a, ("other", "g.bin"): b}
    assert again.shares[a.key].get_manifest() == source[2]
    assert again.remove_share(("club", "f.bin")) == a
    assert again.remove_share(("club", "f.bin")) is None
    assert ShareStore(str(tmp_path)).shares == {("other", "g.bin"): b}


def test_put_share_replaces_same_group_and_name(tmp_path, source):
    store = ShareStore(str(tmp_path))
    store.put_share(make_share(tmp_path, source))
    newer = make_share(tmp_path, source)
    newer.path = "/elsewhere/f.bin"
    store.put_share(newer)
    assert list(ShareStore(str(tmp_path)).shares.values()) == [newer]


def test_downloads_round_trip_through_disk(tmp_path, source):
    store = ShareStore(str(tmp_path))
    r = make_record(source)
    store.put_download(r)
    failed = make_record(source, name="g.bin", dest="/tmp/x/g.bin", have=())
    failed.status, failed.reason = "F", "whole-file hash mismatch; nothing saved"
    store.put_download(failed)
    again = ShareStore(str(tmp_path))
    assert again.downloads == {r.key: r, failed.key: failed}
    assert again.downloads[r.key].part_path == "/tmp/x/f.bin.part"
    # Progress saved in place, as Download._save does.
    again.downloads[r.key].have = [0, 1, 2]
    again.save_downloads()
    assert ShareStore(str(tmp_path)).downloads[r.key].have == [0, 1, 2]
    again.remove_downloads([r.key])
    again.remove_downloads([r.key])         # already gone: nothing to do
    assert list(ShareStore(str(tmp_path)).downloads) == [failed.key]


def test_download_states_are_kept_as_their_letters(tmp_path, source):
    store = ShareStore(str(tmp_path))
    for state, name in zip(DownloadState, ("d.bin", "c.bin", "f.bin")):
        r = make_record(source, name=name)
        r.status = state
        store.put_download(r)
    saved = json.loads((tmp_path / "downloads.json").read_text())
    assert [e["status"] for e in saved] == ["D", "C", "F"]
    again = ShareStore(str(tmp_path)).downloads
    assert [again[("club", n)].status for n in ("d.bin", "c.bin", "f.bin")] == list(DownloadState)
    assert all(type(r.status) is DownloadState for r in again.values())
    assert ["[%s]" % s for s in DownloadState] == ["[D]", "[C]", "[F]"]     # show_downloads' letters


def test_state_files_are_private_and_no_temp_file_is_left(tmp_path, source):
    store = ShareStore(str(tmp_path))
    store.put_share(make_share(tmp_path, source))
    store.put_download(make_record(source))
    assert sorted(os.listdir(tmp_path)) == ["downloads.json", "shares.json"]
    for name in ("shares.json", "downloads.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600
    json.loads((tmp_path / "shares.json").read_text())      # plain JSON


@pytest.mark.parametrize("content", [
    "", "{", "not json", "\x00\x01\x02", "null", "5", '"x"', "{}", '{"a": 1}', "[1, 2]", "[null]",
    '[{"group": "club"}]',                                                         # missing fields
    '[{"group": "club", "name": "f", "path": "/p", "manifest": {}, "size": 1, "mtime_ns": 1, "x": 1}]',
])
def test_corrupt_shares_json_starts_empty(tmp_path, content):
    (tmp_path / "shares.json").write_text(content, errors="surrogateescape")
    (tmp_path / "downloads.json").write_text(content, errors="surrogateescape")
    store = ShareStore(str(tmp_path))
    assert store.shares == {} and store.downloads == {}


def test_undecodable_shares_json_starts_empty(tmp_path):
    (tmp_path / "shares.json").write_bytes(b"[\xff\xfe]")
    assert ShareStore(str(tmp_path)).shares == {}


@pytest.mark.parametrize("field, bad", [
    ("path", None), ("path", 5), ("group", ["club"]), ("size", "12"), ("mtime_ns", None),
    ("size", True), ("manifest", "x"), ("manifest", {"name": "f.bin"}),
])
def test_malformed_share_entry_is_skipped_others_kept(tmp_path, source, field, bad):
    good = make_share(tmp_path, source, name="good.bin")
    broken = make_share(tmp_path, source, name="broken.bin").__dict__.copy()
    broken[field] = bad
    entries = [broken, good.__dict__]
    (tmp_path / "shares.json").write_text(json.dumps(entries))
    assert ShareStore(str(tmp_path)).shares == {good.key: good}


@pytest.mark.parametrize("field, bad", [("have", "0,1"), ("have", [0, "1"]), ("have", [0.5]),
                                        ("dest", None), ("manifest", {}), ("status", "X"), ("status", 3)])
def test_malformed_download_entry_is_skipped_others_kept(tmp_path, source, field, bad):
    good = make_record(source, name="good.bin")
    broken = make_record(source, name="broken.bin").__dict__.copy()
    broken[field] = bad
    (tmp_path / "downloads.json").write_text(json.dumps([broken, good.__dict__]))
    assert ShareStore(str(tmp_path)).downloads == {good.key: good}


def test_corrupt_file_is_replaced_on_next_save(tmp_path, source):
    (tmp_path / "shares.json").write_text("{garbage")
    store = ShareStore(str(tmp_path))
    store.put_share(make_share(tmp_path, source))
    assert len(ShareStore(str(tmp_path)).shares) == 1


# -- Share.changed_on_disk ---------------------------------------------------------

@pytest.fixture
def own_file(tmp_path):
    path = tmp_path / "mine.bin"
    path.write_bytes(b"hello world")
    st_ = os.stat(path)
    manifest = hash_file(str(path))
    return path, Share(group="club", name="mine.bin", path=str(path), manifest=manifest.to_dict(),
                       size=st_.st_size, mtime_ns=st_.st_mtime_ns)


def test_unchanged_file(own_file):
    _, share = own_file
    assert share.changed_on_disk() is None


def test_missing_file(own_file):
    path, share = own_file
    path.unlink()
    assert share.changed_on_disk() == "missing"


def test_size_changed(own_file):
    path, share = own_file
    with open(path, "ab") as f:
        f.write(b"!")
    assert share.changed_on_disk() == "size changed"


def test_modified_same_size(own_file):
    path, share = own_file
    path.write_bytes(b"HELLO WORLD")
    os.utime(path, ns=(share.mtime_ns + 10**9, share.mtime_ns + 10**9))
    assert share.changed_on_disk() == "modified"


# -- bitfields ------------------------------------------------------------------------

@pytest.mark.parametrize("have, count, text", [
    (set(), 0, ""), ({0}, 1, "80"), ({0, 1, 2}, 3, "e0"), ({0}, 3, "80"), ({2}, 3, "20"),
    (set(range(8)), 8, "ff"), ({8}, 9, "0080"), ({0, 15}, 16, "8001"), (set(), 17, "000000"),
])
def test_bitfield_known_values(have, count, text):
    assert bitfield_hex(have, count) == text
    assert parse_bitfield(text, count) == have


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 300).flatmap(
    lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1)) if n else st.just(set()))))
def test_bitfield_round_trip(args):
    count, have = args
    text = bitfield_hex(have, count)
    assert len(text) == 2 * ((count + 7) // 8)
    assert parse_bitfield(text, count) == have


@pytest.mark.parametrize("text, count", [
    ("f0", 3),          # bit 3 set, only pieces 0-2 exist
    ("01", 7),
    ("ff", 1),
    ("0001", 15),
])
def test_bitfield_stray_bits_rejected(text, count):
    with pytest.raises(ValueError):
        parse_bitfield(text, count)


@pytest.mark.parametrize("text, count", [
    ("", 1), ("e0e0", 3), ("e", 3), ("00", 0), ("0000", 9 + 8), ("zz", 3), ("e0", 9), ("+0", 3),
])
def test_bitfield_wrong_length_or_not_hex_rejected(text, count):
    with pytest.raises(ValueError):
        parse_bitfield(text, count)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=12), count=st.integers(0, 64))
def test_parse_bitfield_only_ever_raises_value_error(text, count):
    try:
        have = parse_bitfield(text, count)
    except ValueError:
        return
    assert all(0 <= i < count for i in have)


# -- PieceFile ------------------------------------------------------------------------

@pytest.fixture
def part(tmp_path, source):
    pf = PieceFile(str(tmp_path / "f.bin.part"), source[2], writable=True)
    yield pf
    pf.close()


def test_writable_piece_file_is_created_at_full_size(part, source):
    assert os.path.getsize(part.path) == SIZE


def test_verify_and_write_rejects_bad_data_and_writes_nothing(part, source):
    _, data, _ = source
    bad = bytearray(piece(data, 1))
    bad[12345] ^= 1
    assert part.verify_and_write(1, bad) is False
    assert part.verify_and_write(1, piece(data, 0)) is False           # right size, other piece
    assert part.verify_and_write(1, piece(data, 1)[:-1]) is False      # one byte short
    assert part.verify_and_write(2, piece(data, 2) + b"\x00") is False  # one byte long
    with open(part.path, "rb") as f:
        assert f.read() == bytes(SIZE)
    assert part.verify_existing(range(3)) == []


def test_verify_and_write_puts_good_pieces_at_their_place(part, source):
    _, data, _ = source
    assert part.verify_and_write(2, piece(data, 2)) is True
    assert part.verify_and_write(0, bytearray(piece(data, 0))) is True
    with open(part.path, "rb") as f:
        content = f.read()
    assert content[:PIECE_SIZE] == piece(data, 0)
    assert content[PIECE_SIZE:2 * PIECE_SIZE] == bytes(PIECE_SIZE)
    assert content[2 * PIECE_SIZE:] == piece(data, 2)
    assert part.read(2, 10, 100) == data[2 * PIECE_SIZE + 10:2 * PIECE_SIZE + 110]
    assert part.verify_existing([0, 1, 2]) == [0, 2]


def test_verify_and_write_accepts_memoryview(part, source):
    _, data, _ = source
    assert part.verify_and_write(1, memoryview(piece(data, 1))) is True
    assert part.read(1, 0, PIECE_SIZE) == piece(data, 1)


def test_resume_verifies_only_what_is_really_on_disk(tmp_path, source):
    _, data, manifest = source
    path = str(tmp_path / "r.part")
    pf = PieceFile(path, manifest, writable=True)
    pf.verify_and_write(0, piece(data, 0))
    pf.verify_and_write(1, piece(data, 1))
    pf.close()
    with open(path, "r+b") as f:         # piece 1 damaged while the peer was down
        f.seek(PIECE_SIZE + 5)
        f.write(b"X")
    pf = PieceFile(path, manifest, writable=True)    # reopening keeps the data
    try:
        assert pf.verify_existing([0, 1, 2, 7, -1]) == [0]
    finally:
        pf.close()


def test_read_only_piece_file_reads_blocks(source):
    path, data, manifest = source
    pf = PieceFile(path, manifest)
    try:
        assert pf.read(1, 3, 7) == data[PIECE_SIZE + 3:PIECE_SIZE + 10]
        with pytest.raises(OSError):
            pf.verify_and_write(0, piece(data, 0))     # read-only: never written
    finally:
        pf.close()


def test_short_read_raises(tmp_path, source):
    _, data, manifest = source
    path = tmp_path / "short.bin"
    path.write_bytes(data[:PIECE_SIZE])
    pf = PieceFile(str(path), manifest)
    try:
        with pytest.raises(IOError):
            pf.read(1, 0, 10)
    finally:
        pf.close()


def test_file_hash_of_complete_file(part, source):
    _, data, manifest = source
    for i in range(3):
        assert part.verify_and_write(i, piece(data, i))
    assert part.file_hash() == manifest.file_hash and manifest.rooted


def test_file_hash_of_an_old_style_manifest_is_the_whole_file_sha256(tmp_path, source):
    path, data, _ = source
    old = hash_file(path, whole_file=True)
    pf = PieceFile(str(tmp_path / "old.part"), old, writable=True)
    try:
        for i in range(3):
            assert pf.verify_and_write(i, piece(data, i))
        assert pf.file_hash() == old.file_hash == hashlib.sha256(data).hexdigest()
    finally:
        pf.close()


def test_file_hash_of_incomplete_file_differs(part, source):
    _, data, manifest = source
    part.verify_and_write(0, piece(data, 0))
    assert part.file_hash() != manifest.file_hash


@pytest.mark.parametrize("size", [2 * PIECE_SIZE, (1 << 20) + 1, 1])
def test_file_hash_sees_bytes_appended_after_open(tmp_path, size):
    # Every piece verified, then the file grew on disk: it is not the manifest's file.
    data = random.Random(size).randbytes(size)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    manifest = hash_file(str(src))
    pf = PieceFile(str(tmp_path / "g.part"), manifest, writable=True)
    try:
        for i in range(manifest.pieces):
            assert pf.verify_and_write(i, piece(data, i))
        assert pf.file_hash() == manifest.file_hash
        with open(pf.path, "ab") as f:
            f.write(b"tail")
        assert pf.file_hash() != manifest.file_hash
    finally:
        pf.close()


def test_file_hash_sees_truncation(tmp_path, source):
    _, data, manifest = source
    path = tmp_path / "t.bin"
    path.write_bytes(data)
    pf = PieceFile(str(path), manifest)
    try:
        assert pf.file_hash() == manifest.file_hash
        os.truncate(path, SIZE - 1)
        assert pf.file_hash() != manifest.file_hash
    finally:
        pf.close()


def test_empty_manifest_piece_file(tmp_path):
    src = tmp_path / "empty"
    src.write_bytes(b"")
    manifest = hash_file(str(src))
    assert manifest.pieces == 0
    pf = PieceFile(str(tmp_path / "empty.part"), manifest, writable=True)
    try:
        assert pf.file_hash() == manifest.file_hash and manifest.rooted
        assert pf.verify_existing([0]) == []
    finally:
        pf.close()


def test_close_is_idempotent(tmp_path, source):
    pf = PieceFile(source[0], source[2])
    pf.close()
    pf.close()
    assert pf.fd is None


def test_manifest_survives_share_round_trip(source):
    m = source[2]
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
