"""Download bookkeeping without a network: what is saved when a download is paused early."""

from twisted.internet import defer, task

from mbt.manifest import hash_file
from mbt.peer.download import Download
from mbt.peer.shares import DownloadRecord


class FakeStore:
    def __init__(self):
        self.saves = []

    def save_downloads(self):
        self.saves.append(True)


class FakeNode:
    def __init__(self):
        self.store = FakeStore()
        self.registered = []
        self.direct_writes = True

    def register_servable(self, servable):
        self.registered.append(servable)


class HeldThreads:
    """A thread pool stand-in: work is recorded and finishes only when the test says so."""

    def __init__(self):
        self.calls = []

    def __call__(self, f, *args, **kwargs):
        d = defer.Deferred()
        self.calls.append((f, args, d))
        return d


def test_pausing_during_the_resume_check_keeps_the_saved_progress(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 8192)            # 2 MiB: 4 pieces
    manifest = hash_file(str(src))
    threads = HeldThreads()                               # the re-hash never finishes here
    record = DownloadRecord(group="g", name="src.bin", dest=str(tmp_path / "out.bin"),
                            manifest=manifest.to_dict(), have=[0, 1, 2])
    dl = Download(FakeNode(), record, task.Clock(), threads)
    dl.start()
    assert dl.running and dl.picker is None               # still re-checking the .part file
    assert len(threads.calls) == 1                        # ...in the injected thread pool
    dl.pause()                                            # logout or quit right now
    assert record.have == [0, 1, 2]                       # progress not wiped
    dl.start()                                            # a second start while the first waits
    assert dl._starting is not None                       # ...reuses it instead of racing
    assert len(threads.calls) == 1


class RecordingTracker:
    """The node's tracker link: each request waits for the test to answer it."""

    def __init__(self):
        self.requests = []

    def request(self, op, **kwargs):
        d = defer.Deferred()
        self.requests.append((op, d))
        return d


def test_a_tracker_error_leaves_the_download_line_once_logged_back_in(tmp_path):
    from mbt.errors import TrackerUnavailable
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    manifest = hash_file(str(src))
    node = FakeNode()
    node.tracker = RecordingTracker()
    record = DownloadRecord(group="g", name="src.bin", dest=str(tmp_path / "out.bin"),
                            manifest=manifest.to_dict(), have=[])
    dl = Download(node, record, task.Clock(), HeldThreads())
    dl.running = True                    # as if started; no peers, no network
    dl.swarm.refresh_peers()
    node.tracker.requests[-1][1].errback(TrackerUnavailable("connection to the tracker was lost"))
    assert dl.note == "tracker: connection to the tracker was lost"
    dl.tracker_back()                    # what the node does after "logged back in"
    assert dl.note == ""
    assert [op for op, _ in node.tracker.requests] == ["get_peers", "get_peers"]
    # A refresh that succeeds also clears it.
    dl.note = "tracker: connection to the tracker was lost"
    node.tracker.requests[-1][1].callback({"manifest": manifest.to_dict(), "peers": []})
    assert dl.note == ""
