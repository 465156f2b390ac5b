"""The console command table: parse a line, validate, dispatch, format the reply.

Both consoles (stdio and telnet) drive one :class:`CommandTable`. ``execute``
always fires with text: the reply, or exactly one ``error: ...`` line; it never
fails, so a bad command can never kill a console.
"""

from __future__ import annotations

import re
import shlex
from typing import Callable, Dict, List, Optional

from twisted.internet import defer
from twisted.logger import Logger

from mbt.errors import MbtError, UsageError
from mbt.peer.download import DownloadProgress
from mbt.peer.ratelimit import parse_rate
from mbt.peer.shares import DownloadState

log = Logger(namespace="mbt.commands")


class Command:
    """One console command: name, argument names, summary, handler."""

    def __init__(self, name: str, args: List[str], summary: str, handler: Optional[Callable]) -> None:
        self.name, self.args, self.summary, self.handler = name, args, summary, handler

    @property
    def usage(self) -> str:
        return " ".join([self.name] + ["<%s>" % a for a in self.args])


#: Where ``str.splitlines`` (and so any line-reading script) breaks a line,
#: besides the ``\n`` that separates the lines of a reply on purpose. Names and
#: messages from the tracker may carry them (a file name may hold U+2028).
_LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _one_line(text: str) -> str:
    """``text`` with every line break turned into a space."""
    return _LINE_BREAKS.sub(" ", text.replace("\n", " "))


def _listed_name(name: str) -> str:
    """A file name as the first word of a listing line.

    A legal file name may start with ``error:``; printed as is, its line would
    read as a failure (``error:`` followed by the listing's two spaces reads
    as ``error: ``). Such a name is always shown in single quotes, shell
    style, as ``download_file`` accepts it. ``shlex.quote`` is not enough:
    it leaves ``error:`` bare, a colon being shell-safe.
    """
    if not name.lstrip().startswith("error:"):
        return name
    return "'" + name.replace("'", "'\"'\"'") + "'"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return "%.1f %s" % (n / scale, unit)
    return "%d B" % n


def _plural(n: int, word: str) -> str:
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def _rate(bps: float) -> str:
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if bps >= scale:
            return "%.1f %s" % (bps / scale, unit)
    return "%d B/s" % bps


def download_line(p: DownloadProgress) -> str:
    """One ``show_downloads`` line: ``[D] [group] name  42% 3.1 MB/s 2 peers``."""
    head = "[%s] [%s] %s" % (p.status, p.group, p.name)
    if p.status == DownloadState.COMPLETE:
        return "%s  %s" % (head, p.dest)
    if p.status == DownloadState.FAILED:
        return "%s  %s" % (head, p.reason)
    if not p.running:
        # Not live: no rate, no peers (they would be stale figures).
        return "%s  %d%% paused until the next login" % (head, int(p.percent))
    line = "%s  %d%% %s %s" % (head, int(p.percent), _rate(p.rate), _plural(p.peers, "peer"))
    if p.via:
        line += " (%s)" % p.via         # how they are reached: direct, connect-back, relay
    if p.note:
        line += "  (%s)" % p.note
    return line


def _looks_like_path(word: str) -> bool:
    """``my/file``, ``~/x``, ``song.mp3``: a word a user may have meant as part of a path."""
    return "/" in word or word.startswith("~") or "." in word[1:]


#: More lines for ``help <command>``, where the one-line summary is not enough.
_DETAILS = {
    "upload_file": (
        "\n  file_path: absolute, or relative to the peer process's working directory ({cwd});"
        "\n  the file is shared under its base name. Quote a path with spaces:"
        "\n  upload_file \"my file.txt\" club"),
    "download_file": (
        "\n  destination_path: an existing directory (the file is saved there as <file_name>)"
        "\n  or a new file path in an existing directory; an existing file is never overwritten."
        "\n  Relative paths are resolved against the peer process's working directory ({cwd})."
        "\n  The download runs in the background into <destination>.part (see show_downloads)"
        "\n  and is renamed once verified. Quote a name or path with spaces:"
        "\n  download_file club \"my song.mp3\" ~/Music"),
}


class CommandTable:
    """Every console command of a peer, bound to a :class:`~mbt.peer.node.PeerNode`."""

    def __init__(self, node) -> None:
        self.node = node
        spec = [
            ("create_user", ["user_id", "passwd"], "create an account on the tracker"),
            ("login", ["user_id", "passwd"], "log in; resumes sharing your files"),
            ("logout", [], "stop sharing everything until the next login"),
            ("create_group", ["group_id"], "create a group; you become its owner"),
            ("list_groups", [], "list every group: id, owner, member count, and whether you are"
                                " its owner, a member or pending (asked to join)"),
            ("join_group", ["group_id"], "ask the owner to let you into a group"),
            ("leave_group", ["group_id"], "leave a group (and stop sharing in it)"),
            ("list_requests", ["group_id"], "pending join requests (owner only)"),
            ("accept_request", ["group_id", "user_id"], "let a user into your group"),
            ("reject_request", ["group_id", "user_id"], "turn down a join request"),
            ("list_files", ["group_id"], "files of a group: name, size, peers sharing it now"),
            ("upload_file", ["file_path", "group_id"], "share a file in a group"),
            ("download_file", ["group_id", "file_name", "destination_path"],
             "download a file in the background"),
            ("show_downloads", [], "progress of your downloads; [C] lines show where the file is"),
            ("clear_downloads", [], "remove the finished ([C] and [F]) lines from show_downloads"),
            ("stop_share", ["group_id", "file_name"], "stop sharing one file"),
            ("set", ["option", "value"],
             "change a setting live and keep it for later runs: set upload_rate 20M"
             " (0 = no limit; --upload-rate given at start wins over the kept value);"
             " set verify_on_disk on|off, set direct_writes on|off (these two this run only)"),
            ("help", ["command"], "list commands, or show one command's usage"),
            ("quit", [], "stop this console (the stdio client stops the peer)"),
        ]
        self._seen_groups: set = set()
        self.commands: Dict[str, Command] = {}
        for name, args, summary in spec:
            self.commands[name] = Command(name, args, summary, getattr(self, "cmd_" + name, None))

    # -- the backend interface used by the consoles --------------------------

    def subscribe(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Asynchronous notices from the peer."""
        return self.node.subscribe(listener)

    def execute(self, line: str) -> defer.Deferred:
        """Run one command line; fires with the reply text (never fails)."""
        d = defer.maybeDeferred(self._dispatch, line)
        # Lines of a reply are separated by "\n" only: no other line break may
        # split a listing item, nor start a line that reads as "error: ".
        d.addCallback(lambda text: _LINE_BREAKS.sub(" ", text))
        d.addErrback(self._format_failure, line)
        return d

    def complete(self, text: str) -> List[str]:
        """Words that may end ``text`` (a console line up to the cursor), for Tab.

        The first word completes to command names; a ``<group_id>`` argument to
        the groups this peer has seen (the last ``list_groups``, its shares and
        downloads): cheap, and no tracker round trip while typing.
        """
        words = text.split(" ")
        word = words[-1]
        if len(words) == 1:
            choices = list(self.commands)
        else:
            cmd = self.commands.get(words[0])
            position = len([w for w in words[1:-1] if w])
            arg = cmd.args[position] if cmd is not None and position < len(cmd.args) else None
            choices = {"command": list(self.commands), "option": ["upload_rate"],
                       "group_id": sorted(self.known_groups())}.get(arg, [])
        return [c for c in choices if c.startswith(word)]

    def known_groups(self) -> set:
        """Group ids this console has seen: from ``list_groups``, shares and downloads."""
        groups = set(self._seen_groups)
        groups.update(group for group, _ in getattr(self.node, "servables", {}))
        groups.update(group for group, _ in getattr(self.node, "downloads", {}))
        return groups

    def _format_failure(self, failure, line: str) -> str:
        if failure.check(MbtError):
            return _one_line(failure.value.console_line())
        word = line.split()[0] if line.split() else ""
        log.failure("command {cmd} failed", failure, cmd=word)   # never the arguments: passwords
        return "error: internal error in %s (%s); see the peer's log" % (word, failure.type.__name__)

    def _dispatch(self, line: str):
        try:
            words = shlex.split(line)
        except ValueError as e:
            raise UsageError("cannot parse the line: %s" % e)
        if not words:
            return ""
        name, args = words[0], words[1:]
        cmd = self.commands.get(name)
        if cmd is None:
            raise UsageError("unknown command %r; type help for the list" % name[:40])
        if name == "help":
            if len(args) > 1:
                raise UsageError("usage: help [command]")
        elif len(args) != len(cmd.args):
            if len(args) > len(cmd.args) and any(_looks_like_path(a) for a in args):
                raise UsageError("usage: %s (too many arguments: quote a name or path that has "
                                 "spaces, e.g. \"my file.txt\")" % cmd.usage)
            raise UsageError("usage: %s" % cmd.usage)
        if cmd.handler is None:
            raise UsageError("%s is handled by the console itself" % name)
        return cmd.handler(*args)

    # -- commands ------------------------------------------------------------

    def cmd_help(self, command: Optional[str] = None) -> str:
        if command is not None:
            cmd = self.commands.get(command)
            if cmd is None:
                raise UsageError("no command %r; type help for the list" % command[:40])
            usage = "help [command]" if cmd.name == "help" else cmd.usage
            details = _DETAILS.get(cmd.name, "").format(cwd=getattr(self.node, "cwd", "."))
            return "usage: %s\n  %s%s" % (usage, cmd.summary, details)
        width = max(len(c.usage) for c in self.commands.values())
        lines = ["commands:"]
        for c in self.commands.values():
            usage = "help [command]" if c.name == "help" else c.usage
            lines.append("  %-*s  %s" % (width, usage, c.summary))
        return "\n".join(lines)

    def cmd_create_user(self, user: str, password: str):
        return self.node.create_user(user, password).addCallback(
            lambda r: "user %s created; now login %s <passwd>" % (user, user))

    def cmd_login(self, user: str, password: str):
        def done(r):
            lines = ["logged in as %s; sharing %s" % (user, _plural(r["shares"], "file"))]
            if r["resumed"]:
                lines.append("resumed %s" % _plural(r["resumed"], "download"))
            lines.extend(r["warnings"])
            return "\n".join(lines)
        return self.node.login(user, password).addCallback(done)

    def cmd_logout(self):
        def fmt(r):
            line = "logged out %s; stopped sharing %s until the next login" % (
                r["user"], _plural(r["shares"], "file"))
            if r.get("note"):
                line += " (tracker not told: %s)" % r["note"]
            return line
        return self.node.logout().addCallback(fmt)

    def cmd_create_group(self, group: str):
        return self.node.create_group(group).addCallback(
            lambda r: "group %s created; you are its owner" % group)

    def cmd_list_groups(self):
        def fmt(r):
            groups = r.get("groups", [])
            self._seen_groups = {g["group"] for g in groups}
            if not groups:
                return "(no groups)"
            return "\n".join(("%s  owner %s  %s  %s" % (g["group"], g["owner"], _plural(g["members"], "member"),
                                                        g.get("role") or "")).rstrip()
                             for g in groups)
        return self.node.list_groups().addCallback(fmt)

    def cmd_join_group(self, group: str):
        return self.node.join_group(group).addCallback(
            lambda r: "asked to join %s; waiting for its owner %s to accept" % (group, r.get("owner")))

    def cmd_leave_group(self, group: str):
        def fmt(r):
            if r.get("withdrawn"):
                return "withdrew your request to join %s" % group
            if r.get("deleted"):
                return "left group %s; it had no members left and was deleted" % group
            if r.get("was_owner"):
                return "left group %s; ownership passed to %s" % (group, r.get("owner"))
            return "left group %s" % group
        return self.node.leave_group(group).addCallback(fmt)

    def cmd_list_requests(self, group: str):
        def fmt(r):
            reqs = r.get("requests", [])
            return "\n".join(reqs) if reqs else "(no pending requests)"
        return self.node.list_requests(group).addCallback(fmt)

    def cmd_accept_request(self, group: str, user: str):
        return self.node.accept_request(group, user).addCallback(
            lambda r: "%s is now a member of %s" % (user, group))

    def cmd_reject_request(self, group: str, user: str):
        return self.node.reject_request(group, user).addCallback(
            lambda r: "rejected %s's request to join %s" % (user, group))

    def cmd_list_files(self, group: str):
        def fmt(r):
            files = r.get("files", [])
            if not files:
                return "(no files shared in %s)" % group
            return "\n".join("%s  %d bytes (%s)  %s  %s" % (
                _listed_name(f["name"]), f["size"], _size(f["size"]), _plural(f["pieces"], "piece"),
                _plural(f["peers"], "peer")) for f in files)
        return self.node.list_files(group).addCallback(fmt)

    def cmd_upload_file(self, path: str, group: str):
        def fmt(r):
            if r.get("already"):
                return "already shared %s in %s from %s" % (r["name"], r["group"], r["path"])
            if r.get("previous_path"):
                return "%s in %s is now shared from %s instead of %s" % (
                    r["name"], r["group"], r["path"], r["previous_path"])
            speed = ""
            if r["size"] >= (64 << 20) and r["seconds"] > 0:
                speed = ", hashed at %.0f MB/s" % (r["size"] / r["seconds"] / 1e6)
            return "shared %s in %s: %d bytes (%s), %s%s" % (
                r["name"], r["group"], r["size"], _size(r["size"]), _plural(r["pieces"], "piece"), speed)
        return self.node.upload_file(path, group).addCallback(fmt)

    def cmd_download_file(self, group: str, name: str, dest: str):
        return self.node.download_file(group, name, dest).addCallback(
            lambda r: "downloading %s into %s" % (r["name"], r["dest"]))

    def cmd_show_downloads(self):
        lines = [download_line(p) for p in self.node.show_downloads()]
        if self.node.user is None and lines:
            # Logged out, nothing runs: unfinished downloads show as paused.
            lines.insert(0, "(logged out: nothing is downloading; unfinished downloads resume at the next login)")
        return "\n".join(lines) if lines else "(no downloads)"

    def cmd_clear_downloads(self):
        n = self.node.clear_downloads()
        return "cleared %s" % _plural(n, "finished download") if n else "(no finished downloads to clear)"

    def quit_message(self) -> str:
        """What ``quit`` says when it stops the peer (the stdio client): ``bye``,
        after how many running downloads it pauses."""
        n = self.node.running_downloads()
        if not n:
            return "bye"
        return "%s paused; %s at the next login\nbye" % (
            _plural(n, "download"), "it resumes" if n == 1 else "they resume")

    def cmd_set(self, option: str, value: str):
        if option == "verify_on_disk":
            if value not in ("on", "off"):
                raise UsageError("verify_on_disk is on or off")
            self.node.verify_on_disk = value == "on"
            return ("completed downloads are read back from disk and every piece checked again"
                    if value == "on" else "completed downloads are not read back (every piece is checked "
                                          "as it arrives)")
        if option == "direct_writes":
            if value not in ("on", "off"):
                raise UsageError("direct_writes is on or off")
            self.node.direct_writes = value == "on"
            return ("downloads started or resumed from now on write verified pieces past the page cache (O_DIRECT) "
                    "where the file system allows it" if value == "on" else
                    "downloads started or resumed from now on write through the page cache")
        if option != "upload_rate":
            raise UsageError("unknown setting %r; settings: upload_rate, verify_on_disk, direct_writes"
                             % option[:40])
        try:
            rate = parse_rate(value)
        except ValueError as e:
            raise UsageError(str(e))
        self.node.set_upload_rate(rate)
        if not rate:
            return "no upload rate limit (kept for later runs)"
        return "upload rate limit: %.1f MB/s for all uploads (kept for later runs)" % (rate / 1e6)

    def cmd_stop_share(self, group: str, name: str):
        return self.node.stop_share(group, name).addCallback(
            lambda r: "stopped sharing %s in %s" % (name, group))
