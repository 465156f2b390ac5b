#!/usr/bin/python3
"""libtorrent's side of ``make bench-compare``: one seeder or one leecher process.

Runs with Debian's ``/usr/bin/python3`` (the only Python here with the
``python3-libtorrent`` bindings), never with the venv's Python. Adapted from
the loopback anchors in ``../shared/bench-anchors`` (``lt_common.py``,
``lt_seed.py``, ``lt_leech.py``): the same session settings, so the figures
are comparable with the anchors' table.

    lt_job.py seed  --port P --save DIR [--high-perf] [--tracker] [--upload-rate B] [--stats OUT] TORRENT
    lt_job.py leech --port P --save DIR [--high-perf] [--tracker] --peers H:P,... --json OUT TORRENT
    lt_job.py leech ... --swarm [--upload-rate B]      (1 -> N job: waits for GO, seeds after)

The seeder prints ``READY`` once it has checked every piece of its copy (and,
with ``--tracker``, had an announce reply), then seeds until SIGTERM. The
leecher downloads once, writes a JSON result and exits.

Timing is taken *inside* the leecher so it can be compared with mbt's
"download_file -> [C]": ``add_to_finished_s`` runs from adding the torrent
(the session is already up, like mbt's already-running peer) to
``torrent_finished_alert`` (every piece hash-checked and handed to the disk).
CPU (``getrusage``, all threads) is sampled at the same two instants.
"""

import argparse
import json
import os
import resource
import signal
import sys
import time

import libtorrent as lt


def loopback_settings(port, high_perf, upload_rate=0):
    """settings_pack for a session on 127.0.0.1:port, as the anchors use it.

    Everything that would block, slow or scatter loopback traffic is off
    (DHT, LSD, UPnP, NAT-PMP, uTP); several peers per IP are allowed (every
    peer is 127.0.0.1); no rate limits. ``high_perf`` adds libtorrent's own
    ``high_performance_seed()`` preset (the anchors' ``bt-hp`` suite).
    ``upload_rate`` (bytes/s of payload, 0 = none) caps the session's uploads
    the way mbt's ``--upload-rate`` does: on loopback too (libtorrent ignores
    limits on a local network by default), payload bytes only.
    """
    s = dict(lt.high_performance_seed()) if high_perf else {}
    s.update({
        'listen_interfaces': '127.0.0.1:%d' % port,
        'outgoing_interfaces': '',
        'enable_dht': False,
        'enable_lsd': False,
        'enable_upnp': False,
        'enable_natpmp': False,
        'enable_incoming_utp': False,
        'enable_outgoing_utp': False,
        'enable_incoming_tcp': True,
        'enable_outgoing_tcp': True,
        'allow_multiple_connections_per_ip': True,
        'upload_rate_limit': int(upload_rate),
        'download_rate_limit': 0,
        'ignore_limits_on_local_network': not upload_rate,
        'rate_limit_ip_overhead': False,
        'alert_mask': (lt.alert.category_t.error_notification
                       | lt.alert.category_t.status_notification
                       | lt.alert.category_t.tracker_notification
                       | lt.alert.category_t.storage_notification
                       | lt.alert.category_t.connect_notification),
        'user_agent': 'mbt-bench-compare',
    })
    return s


def proc_status():
    """Selected fields (kB) of /proc/self/status."""
    out = {}
    with open('/proc/self/status') as f:
        for line in f:
            k, _, v = line.partition(':')
            if k in ('VmHWM', 'RssAnon', 'RssFile'):
                out[k] = int(v.split()[0])
    return out


def cpu_now():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def add(ses, torrent, save, tracker):
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = save
    atp.flags &= ~lt.torrent_flags.auto_managed
    atp.flags |= lt.torrent_flags.paused        # resumed by the caller, after tracker edits
    h = ses.add_torrent(atp)
    if not tracker:
        h.replace_trackers([])
    return h, atp.ti.total_size()


def seed(a):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    ses = lt.session(loopback_settings(a.port, a.high_perf, a.upload_rate))
    h, _ = add(ses, a.torrent, a.save, a.tracker)
    h.resume()
    t0 = time.time()
    ready = replied = False
    while not stop:
        ses.wait_for_alert(200)
        if a.stats and ready:
            write_json(a.stats, {'payload_upload': h.status().total_payload_upload})
        for al in ses.pop_alerts():
            if isinstance(al, lt.tracker_reply_alert):
                replied = True
            elif isinstance(al, (lt.tracker_error_alert, lt.torrent_error_alert, lt.file_error_alert)):
                print('ALERT', type(al).__name__, al.message(), file=sys.stderr, flush=True)
        if not ready and h.status().is_seeding and (replied or not a.tracker):
            ready = True
            print('READY port=%d after %.2fs' % (a.port, time.time() - t0), flush=True)
        if time.time() - t0 > a.timeout:
            print('seeder timeout', file=sys.stderr, flush=True)
            break
    ses.pause()


def write_json(path, obj):
    with open(path + '.tmp', 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(path + '.tmp', path)


def leech(a):
    t_start = time.monotonic()
    ses = lt.session(loopback_settings(a.port, a.high_perf, a.upload_rate))
    h, total = add(ses, a.torrent, a.save, a.tracker)
    if a.swarm:
        # Everything set up; the driver starts every leecher of the swarm at once.
        print('READY', flush=True)
        if sys.stdin.readline().strip() != 'GO':
            return 1
    cpu_add = cpu_now()
    t_add = time.monotonic()
    wall_add = time.time()
    h.resume()
    for hp in filter(None, a.peers.split(',')):
        host, _, port = hp.rpartition(':')
        h.connect_peer((host, int(port)))
    t_first = t_fin = t_connect = None
    cpu_fin = None
    peak_anon = 0
    last_sample = 0.0
    errors = []
    while t_fin is None:
        # Poll finely until the first payload byte, so that t_first is accurate.
        ses.wait_for_alert(50 if t_first is not None else 2)
        for al in ses.pop_alerts():
            if isinstance(al, lt.torrent_finished_alert):
                t_fin = time.monotonic()
                cpu_fin = cpu_now()
            elif isinstance(al, lt.peer_connect_alert) and t_connect is None:
                t_connect = time.monotonic()
            elif isinstance(al, (lt.tracker_error_alert, lt.torrent_error_alert, lt.file_error_alert,
                                 lt.hash_failed_alert)):
                errors.append(al.message())
        now = time.monotonic()
        if t_first is None and h.status().total_payload_download > 0:
            t_first = now
        if now - last_sample >= 0.25 or t_fin is not None:
            last_sample = now
            peak_anon = max(peak_anon, proc_status().get('RssAnon', 0))
        if now - t_start > a.timeout:
            errors.append('timeout')
            break
    st = h.status()
    ps = proc_status()
    res = {
        'ok': t_fin is not None and not [e for e in errors if 'hash' in e or e == 'timeout'],
        'size': total,
        'start_to_finished_s': (t_fin - t_start) if t_fin else None,
        'add_to_finished_s': (t_fin - t_add) if t_fin else None,
        'add_to_first_connect_s': (t_connect - t_add) if t_connect else None,
        'add_to_first_payload_s': (t_first - t_add) if t_first else None,
        'first_payload_to_finished_s': (t_fin - t_first) if (t_fin and t_first) else None,
        'cpu_download_s': (cpu_fin - cpu_add) if cpu_fin is not None else None,
        'cpu_at_finish_s': cpu_fin,
        'payload_download': st.total_payload_download,
        'redundant_bytes': st.total_redundant_bytes,
        'failed_bytes': st.total_failed_bytes,
        'peak_rss_anon_kb': max(peak_anon, ps.get('RssAnon', 0)),
        'vm_hwm_kb': ps.get('VmHWM'),
        'errors': errors[:20],
        'wall_add': wall_add,
        'wall_finished': wall_add + (t_fin - t_add) if t_fin else None,
        'payload_upload': st.total_payload_upload,
    }
    write_json(a.json, res)
    if a.swarm and res['ok']:
        # A finished leecher of the swarm seeds on, as mbt's does, until SIGTERM.
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        deadline = time.monotonic() + a.timeout
        while not stop and time.monotonic() < deadline:
            ses.wait_for_alert(200)
            ses.pop_alerts()
        res['payload_upload'] = h.status().total_payload_upload
        write_json(a.json, res)
    ses.pause()
    return 0 if res['ok'] else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('mode', choices=['seed', 'leech'])
    ap.add_argument('torrent')
    ap.add_argument('--port', type=int, required=True)
    ap.add_argument('--save', required=True)
    ap.add_argument('--high-perf', action='store_true', help='libtorrent.high_performance_seed() preset')
    ap.add_argument('--tracker', action='store_true', help="use the torrent's tracker (else tracker-less)")
    ap.add_argument('--peers', default='', help='leecher: comma list of host:port to connect_peer()')
    ap.add_argument('--json', help='leecher: where to write the result')
    ap.add_argument('--timeout', type=float, default=600)
    ap.add_argument('--upload-rate', type=float, default=0, help='payload upload cap, bytes/s (0 = none)')
    ap.add_argument('--stats', help='seeder: keep its payload upload count in this JSON file')
    ap.add_argument('--swarm', action='store_true',
                    help='leecher: print READY, start on a GO line on stdin, seed after finishing until SIGTERM')
    a = ap.parse_args()
    if a.mode == 'seed':
        seed(a)
        return 0
    return leech(a)


if __name__ == '__main__':
    sys.exit(main())
