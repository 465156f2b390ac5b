"""README.rst's Layout section names every module of mbt/ and nothing that is gone."""

import fnmatch
import os
import re

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


def layout_entries():
    """Paths and patterns named in the Layout block (``a/b.py, c.py`` means ``a/c.py`` too)."""
    text = open(os.path.join(ROOT, "README.rst"), encoding="utf-8").read()
    block = text[text.index("\nLayout\n"):]
    block = block[block.index("::"):block.index("\nWhat moved where")]
    entries = set()
    for line in block.splitlines():
        words = line.split()
        if not words or not words[0].startswith(("mbt/", "twisted/")):
            continue
        folder = ""
        for word in words:
            word = word.rstrip(",")
            if word.startswith(("mbt/", "twisted/")):
                folder = word.rsplit("/", 1)[0] + "/"
                entries.add(word)
            elif re.fullmatch(r"[a-z_*]+\.py", word) and folder:
                entries.add(folder + word)
            else:
                break
    return entries


def modules():
    out = []
    for top in ("mbt", os.path.join("twisted", "plugins")):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py") and f != "__init__.py":
                    out.append(os.path.relpath(os.path.join(dirpath, f), ROOT).replace(os.sep, "/"))
    return out


def named(path, entries):
    return any(path == e or fnmatch.fnmatch(path, e) or (e.endswith("/") and path.startswith(e))
               for e in entries)


def test_every_module_is_in_the_layout():
    entries = layout_entries()
    missing = [m for m in modules() if not named(m, entries)]
    assert missing == []


def test_the_layout_names_no_missing_file():
    mods = modules()
    gone = [e for e in layout_entries()
            if not e.endswith("/") and "*" not in e and e not in mods]
    assert gone == []
