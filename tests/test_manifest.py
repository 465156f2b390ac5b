"""Piece geometry, file hashing and manifest validation."""

import hashlib

import pytest

from mbt.errors import InvalidArgument
from mbt.manifest import (MAX_FILE_SIZE, PIECE_SIZE, Manifest, hash_file, main, piece_count, piece_length,
                          pieces_root)

K = 3  # "k pieces" in the edge cases below

SIZES = [0, 1, PIECE_SIZE - 1, PIECE_SIZE, PIECE_SIZE + 1, K * PIECE_SIZE, K * PIECE_SIZE + 1]


def test_piece_size_is_512_kib():
    assert PIECE_SIZE == 512 * 1024


@pytest.mark.parametrize("size, pieces", [
    (0, 0), (1, 1), (PIECE_SIZE - 1, 1), (PIECE_SIZE, 1), (PIECE_SIZE + 1, 2),
    (K * PIECE_SIZE, K), (K * PIECE_SIZE + 1, K + 1),
])
def test_piece_count_rounds_up(size, pieces):
    assert piece_count(size) == pieces


def test_empty_file_has_no_piece_to_measure():
    with pytest.raises(IndexError):
        piece_length(0, 0)


def test_one_byte_file_is_one_one_byte_piece():
    assert piece_length(0, 1) == 1
    with pytest.raises(IndexError):
        piece_length(1, 1)


def test_exactly_one_piece_is_full_length():
    assert piece_length(0, PIECE_SIZE) == PIECE_SIZE
    with pytest.raises(IndexError):
        piece_length(1, PIECE_SIZE)


def test_k_whole_pieces_are_all_full_length():
    assert [piece_length(i, K * PIECE_SIZE) for i in range(K)] == [PIECE_SIZE] * K
    with pytest.raises(IndexError):
        piece_length(K, K * PIECE_SIZE)


def test_k_pieces_plus_one_byte_ends_with_a_one_byte_piece():
    size = K * PIECE_SIZE + 1
    assert [piece_length(i, size) for i in range(K + 1)] == [PIECE_SIZE] * K + [1]
    with pytest.raises(IndexError):
        piece_length(-1, size)


@pytest.mark.parametrize("size", SIZES)
def test_piece_lengths_sum_to_the_size(size):
    assert sum(piece_length(i, size) for i in range(piece_count(size))) == size


def test_custom_piece_size_geometry():
    assert piece_count(10, 4) == 3
    assert [piece_length(i, 10, 4) for i in range(3)] == [4, 4, 2]


def _data(size):
    # Distinct bytes per piece, so a piece mix-up would change the hashes.
    block = bytes(range(251)) * (PIECE_SIZE // 251 + 1)
    return (block * (size // len(block) + 1))[:size]


@pytest.mark.parametrize("size", SIZES)
def test_hash_file_matches_hashlib(tmp_path, size):
    data = _data(size)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    m = hash_file(str(path))
    assert m.name == "file.bin"
    assert m.size == size
    expected = [hashlib.sha256(data[i:i + PIECE_SIZE]).hexdigest() for i in range(0, size, PIECE_SIZE)]
    assert list(m.piece_hashes) == expected
    assert m.pieces == piece_count(size)
    # file_hash is the root over the size and the piece digests, exactly as documented.
    root = hashlib.sha256(b"mbt pieces-v1\n" + str(size).encode() + b"\n"
                          + b"".join(bytes.fromhex(h) for h in expected)).hexdigest()
    assert m.file_hash == root and m.rooted
    # The manifest survives the wire: to_dict -> from_dict is the identity.
    assert Manifest.from_dict(m.to_dict()) == m


@pytest.mark.parametrize("size", SIZES)
def test_hash_file_whole_file_makes_an_old_style_manifest(tmp_path, size):
    data = _data(size)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    old = hash_file(str(path), whole_file=True)
    new = hash_file(str(path))
    assert old.file_hash == hashlib.sha256(data).hexdigest() and not old.rooted
    assert old.piece_hashes == new.piece_hashes and old.size == new.size
    assert Manifest.from_dict(old.to_dict()).rooted is False


def test_the_root_binds_the_size_the_order_and_every_piece():
    a, b = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    base = pieces_root(2 * PIECE_SIZE, [a, b])
    assert pieces_root(2 * PIECE_SIZE, [b, a]) != base
    assert pieces_root(2 * PIECE_SIZE - 1, [a, b]) != base
    assert pieces_root(2 * PIECE_SIZE, [a, a]) != base
    assert pieces_root(0, []) == hashlib.sha256(b"mbt pieces-v1\n0\n").hexdigest()


def test_a_manifest_with_a_forged_file_hash_is_not_rooted():
    h = hashlib.sha256(b"x").hexdigest()
    m = Manifest(name="a", size=1, file_hash=pieces_root(1, [bytes.fromhex(h)]), piece_hashes=(h,))
    assert m.rooted
    other = Manifest(name="a", size=1, file_hash="0" * 64, piece_hashes=(h,))
    assert not other.rooted     # a download then checks the whole file's SHA-256 against it


def test_command_line_prints_file_hash_and_sha256(tmp_path, capsys):
    data = _data(PIECE_SIZE + 3)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert main([str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "%s  file_hash  %s" % (hash_file(str(path)).file_hash, path)
    assert out[1] == "%s  sha256     %s" % (hashlib.sha256(data).hexdigest(), path)
    assert main([str(tmp_path / "missing")]) == 1
    assert "error: " in capsys.readouterr().err


def test_hash_file_uses_given_name_and_reports_progress(tmp_path):
    size = 2 * PIECE_SIZE + 5
    path = tmp_path / "x"
    path.write_bytes(_data(size))
    seen = []
    m = hash_file(str(path), name="shown.bin", progress=lambda done, total: seen.append((done, total)))
    assert m.name == "shown.bin"
    assert seen == [(PIECE_SIZE, size), (2 * PIECE_SIZE, size), (size, size)]


def test_hash_file_can_be_cancelled(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(_data(2 * PIECE_SIZE))
    with pytest.raises(InvalidArgument, match="cancelled"):
        hash_file(str(path), cancelled=lambda: True)


def _good(**over):
    size = over.pop("size", PIECE_SIZE + 1)
    d = {"name": "a.bin", "size": size, "piece_size": PIECE_SIZE, "file_hash": "a" * 64,
         "piece_hashes": ["b" * 64] * piece_count(size)}
    d.update(over)
    return d


def test_from_dict_accepts_a_valid_manifest():
    m = Manifest.from_dict(_good())
    assert (m.name, m.size, m.pieces, m.piece_size) == ("a.bin", PIECE_SIZE + 1, 2, PIECE_SIZE)
    assert m.piece_length(1) == 1


def test_from_dict_accepts_an_empty_file_and_default_piece_size():
    d = _good(size=0)
    del d["piece_size"]
    m = Manifest.from_dict(d)
    assert m.size == 0 and m.pieces == 0 and m.piece_size == PIECE_SIZE


@pytest.mark.parametrize("bad", [
    None, [], "manifest", 42,
])
def test_from_dict_rejects_non_objects(bad):
    with pytest.raises(InvalidArgument, match="manifest must be an object"):
        Manifest.from_dict(bad)


@pytest.mark.parametrize("name", [
    "a/b", "../x", "..", ".", "", "a\x00b", "a\nb", "a\\b", " lead", "trail ", "\x7f",
    "x" * 256, None, 5, ["a"],
])
def test_from_dict_rejects_bad_names(name):
    with pytest.raises(InvalidArgument, match="invalid file name"):
        Manifest.from_dict(_good(name=name))


def test_from_dict_accepts_unusual_but_safe_names():
    for name in ["..hidden", "a b.txt", "\u00e9t\u00e9.mp3", "x" * 255, "...."]:
        assert Manifest.from_dict(_good(name=name)).name == name


@pytest.mark.parametrize("size", [-1, MAX_FILE_SIZE + 1, 1.5, "10", True, None])
def test_from_dict_rejects_bad_sizes(size):
    d = _good()
    d["size"] = size
    with pytest.raises(InvalidArgument, match="size"):
        Manifest.from_dict(d)


@pytest.mark.parametrize("file_hash", [
    "A" * 64, "a" * 63, "a" * 65, "g" * 64, "", None, 123, ["a" * 64],
])
def test_from_dict_rejects_bad_file_hash(file_hash):
    with pytest.raises(InvalidArgument, match="file_hash"):
        Manifest.from_dict(_good(file_hash=file_hash))


@pytest.mark.parametrize("hashes", [
    ["b" * 64],                 # one too few
    ["b" * 64] * 3,             # one too many
    [],
    "b" * 128,                  # not a list
    None,
])
def test_from_dict_rejects_wrong_piece_count(hashes):
    with pytest.raises(InvalidArgument, match="must list 2 piece hashes"):
        Manifest.from_dict(_good(piece_hashes=hashes))


@pytest.mark.parametrize("bad", ["B" * 64, "b" * 10, None, 7])
def test_from_dict_rejects_bad_piece_hash(bad):
    with pytest.raises(InvalidArgument, match="piece hashes must be 64 lowercase hex"):
        Manifest.from_dict(_good(piece_hashes=["b" * 64, bad]))


@pytest.mark.parametrize("psize", [1024, PIECE_SIZE * 2, 0, "524288", None])
def test_from_dict_rejects_other_piece_sizes(psize):
    with pytest.raises(InvalidArgument, match="piece_size"):
        Manifest.from_dict(_good(piece_size=psize))
