#!/usr/bin/env python3
"""facefs benchmark: facefs against the emulator, next to baselines measured
in the same run (one-by-one curl downloads, the same files on tmpfs).

Usage: scripts/bench.py [--users 1000] [--latency 50ms] [--limit 50] [--face-width 240]

Prints a Markdown table: scenario, facefs, baseline, ratio, target, API requests,
peak RSS. Loopback only; takes a few minutes (the curl baseline alone is about
users x 2 x latency). Needs root (or /dev/fuse access), rsync and curl.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import socket
import time
import urllib.request
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACEFS = os.path.join(ROOT, "target", "release", "facefs")
EMULATOR = os.path.join(ROOT, "target", "release", "facefs-emulator")


# Every emulator and mount started, so that a failure part-way stops them too.
STARTED = []


def say(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class Emulator:
    def __init__(self, users, latency, limit, face_width, pad=None):
        args = [EMULATOR, "--users", str(users), "--latency", latency, "--face-width", str(face_width)]
        if pad:
            args += ["--pad-faces-to", pad]
        if limit:
            args += ["--rate-limit", str(limit)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        STARTED.append(self)
        info = {}
        for _ in range(3):
            key, _, value = self.proc.stdout.readline().strip().partition("=")
            info[key] = value
        self.url, self.app_id, self.secret = info["base_url"], info["app_id"], info["app_secret"]

    def stats(self):
        with urllib.request.urlopen(f"{self.url}/_emulator/stats") as r:
            return json.load(r)

    def timeline(self):
        """[[Unix second, answered, throttled], ...] of the API requests."""
        with urllib.request.urlopen(f"{self.url}/_emulator/timeline") as r:
            return json.load(r)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


class Mount:
    def __init__(self, emu, path, *flags, log_level=None):
        self.path = path
        env = dict(os.environ, FEISHU_APP_SECRET=emu.secret,
                   FACEFS_LOG=log_level or os.environ.get("FACEFS_LOG", "warn"))
        args = [FACEFS, path, "-f", "--base-url", emu.url, "--app-id", emu.app_id, *flags]
        self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL)
        STARTED.append(self)
        deadline = time.time() + 20
        while not os.path.ismount(path):
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit("facefs did not mount")
            time.sleep(0.02)

    def peak_rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        if self.proc.poll() is not None:
            return
        subprocess.run(["umount", self.path], check=False)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            subprocess.run(["umount", "-l", self.path], check=False)
            self.proc.kill()


class Skip(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fuse_ops(port, op):
    """How many `op` requests the kernel sent the mount whose metrics are on `port`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(f'facefs_fuse_op_seconds_count{{op="{op}"}} '):
                return int(float(line.split()[1]))
    return 0


def timed(cmd, **kw):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)
    return time.perf_counter() - start


def median_time(cmd, runs=5, **kw):
    return statistics.median(timed(cmd, **kw) for _ in range(runs))


def shell(script):
    return ["bash", "-c", script]


def curl_one_by_one(emu, ids, dest):
    """How a user scripts it today: a token, then one curl per file."""
    body = json.dumps({"app_id": emu.app_id, "app_secret": emu.secret})
    out = subprocess.run(
        ["curl", "-sS", "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", "@-",
         f"{emu.url}/open-apis/auth/v3/tenant_access_token/internal"],
        input=body, capture_output=True, text=True, check=True)
    token = json.loads(out.stdout)["tenant_access_token"]
    start = time.perf_counter()
    for n, user in enumerate(ids):
        for cropped in ("false", "true"):
            name = f"{user}.cropped.jpg" if cropped == "true" else f"{user}.jpg"
            url = f"{emu.url}/open-apis/acs/v1/users/{user}/face?is_cropped={cropped}&user_id_type=open_id"
            subprocess.run(["curl", "-sSf", "-H", f"Authorization: Bearer {token}", "-o", os.path.join(dest, name), url],
                           check=True)
        if n % 100 == 99:
            say(f"  curl baseline: {2 * (n + 1)} files")
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1000, help="users with faces (default 1000, i.e. 2000 files)")
    ap.add_argument("--latency", default="50ms")
    ap.add_argument("--limit", type=int, default=50, help="the server's requests per second in the limited run")
    ap.add_argument("--face-width", type=int, default=240, help="pixels; 240 gives faces of tens of KB")
    ap.add_argument("--rss-cache-mib", type=int, default=8, help="--cache-size of the memory run, in MiB")
    ap.add_argument("--only", choices=["rss", "abuse", "store", "events", "restore", "fleet"],
                    help="run only this scenario ('abuse': the bounds of issue 11; 'store': the on-disk store; "
                         "'events': the event long connection; 'restore': --writable; 'fleet': --redis)")
    ap.add_argument("--fleet-runs", default="up,killed,failover",
                    help="which fleet runs: up (Redis up throughout), killed (Redis killed at half-time), "
                         "failover (a Sentinel failover at half-time)")
    ap.add_argument("--timeline", action="store_true",
                    help="fleet runs that kill Redis: print the server's answered and throttled requests "
                         "of each second from 5 s before the kill to 30 s after")
    ap.add_argument("--restore-faces", type=int, default=2000, help="faces the restore run puts back")
    ap.add_argument("--stored", type=int, default=100_000, help="entries in the store whose mount time is measured")
    ap.add_argument("--absent", type=int, default=1_000_000, help="stats of absent names in the abuse run")
    args = ap.parse_args()

    for tool in ("rsync", "curl"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: scripts/need.sh {tool}:{tool}")
    say("building release binaries")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "facefs", "--bin", "facefs-emulator"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="facefs-bench-")
    shm = tempfile.mkdtemp(prefix="facefs-bench-", dir="/dev/shm")
    rows = []
    # The emulator gives every 7th user past the 8th no face; ask for enough
    # users that `--users` of them have faces.
    tenant = args.users + args.users // 6 + 8
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt)
    try:
        if args.only in ("rss", "abuse", "store", "events", "restore", "fleet"):
            raise Skip()
        # 1. Cold rsync, no server limit, against one-by-one curl.
        say(f"cold rsync of {args.users * 2} files at {args.latency} latency, no server limit")
        emu = Emulator(tenant, args.latency, None, args.face_width)
        m = Mount(emu, mnt, "--rate-limit", "10000")
        files = len(os.listdir(os.path.join(mnt, "open_id")))
        ids = sorted({n[:-len(".cropped.jpg")] if n.endswith(".cropped.jpg") else n[:-4] for n in os.listdir(os.path.join(mnt, "open_id"))})
        before = emu.stats().get("Face", 0)
        backup = os.path.join(work, "backup")
        cold = timed(["rsync", "-a", f"{mnt}/open_id/", backup])
        face_requests = emu.stats().get("Face", 0) - before
        rss = m.peak_rss_kib()
        say(f"  facefs: {cold:.2f} s, {face_requests} face requests; now the curl baseline (about {files * 0.06:.0f} s)")
        curl_dir = os.path.join(work, "curl")
        os.makedirs(curl_dir)
        one_by_one = curl_one_by_one(emu, ids, curl_dir)
        rows.append(("cold `rsync -a`, %d files, %s latency" % (files, args.latency), cold, one_by_one,
                     one_by_one / cold, ">= 16x faster than one by one", face_requests, rss))
        rows.append(("face requests in that cold backup", face_requests, files, face_requests / files,
                     "exactly 1 per file", face_requests, rss))

        # 2. Warm reads and listings against tmpfs.
        say("warm cat and ls -l, against the same files on tmpfs")
        before = emu.stats().get("Face", 0)  # the curl baseline used the same emulator
        tmpfs = os.path.join(shm, "faces")
        shutil.copytree(backup, tmpfs)
        cat_fuse = median_time(shell(f"cat {mnt}/open_id/* > /dev/null"))
        cat_tmpfs = median_time(shell(f"cat {tmpfs}/* > /dev/null"))
        rows.append(("`cat` of every cached face, warm", cat_fuse, cat_tmpfs, cat_fuse / cat_tmpfs,
                     "within 1.3x of tmpfs", emu.stats().get("Face", 0) - before, m.peak_rss_kib()))
        ls_fuse = median_time(shell(f"ls -l {mnt}/open_id > /dev/null"))
        ls_tmpfs = median_time(shell(f"ls -l {tmpfs} > /dev/null"))
        rows.append(("`ls -l` of %d cached faces" % files, ls_fuse, ls_tmpfs, ls_fuse / ls_tmpfs, "within 2x of tmpfs",
                     emu.stats().get("Face", 0) - before, m.peak_rss_kib()))
        m.stop()
        emu.stop()

        # 3. The server limited to --limit requests/s, facefs paced to it.
        floor = (files + (tenant + 49) // 50) / args.limit
        say(f"cold rsync with the server limited to {args.limit}/s (floor {floor:.1f} s)")
        emu = Emulator(tenant, args.latency, args.limit, args.face_width)
        m = Mount(emu, mnt, "--rate-limit", str(args.limit))
        limited_backup = os.path.join(work, "backup-limited")
        limited = timed(["rsync", "-a", f"{mnt}/open_id/", limited_backup])
        stats = emu.stats()
        rows.append((f"the same with the server at {args.limit}/s, `--rate-limit {args.limit}`", limited, floor,
                     limited / floor, "within 1.15x of the floor, no 429", stats.get("Face", 0),
                     m.peak_rss_kib()))
        throttled = stats.get("Throttled", 0)
        m.stop()
        emu.stop()
    except Skip:
        pass
    try:
        if args.only == "abuse":
            rows += abuse(args, work, shm, mnt)
            raise Skip()
        if args.only == "store":
            rows += store(args, work, shm, mnt, tenant)
            raise Skip()
        if args.only == "events":
            rows += events(args, work, mnt, tenant)
            raise Skip()
        if args.only == "restore":
            rows += restore(args, work, mnt)
            raise Skip()
        if args.only == "fleet":
            rows += fleet(args, work, tenant)
            raise Skip()
        # 4. Memory: read 10x the cache size.
        cache = f"{args.rss_cache_mib}MiB"
        say(f"peak RSS after reading 10x --cache-size {cache}")
        emu = Emulator(tenant, "0s", None, args.face_width)
        m = Mount(emu, mnt, "--rate-limit", "10000", "--cache-size", cache)
        read_bytes = 0
        cache_bytes = args.rss_cache_mib << 20
        rounds = 0
        while read_bytes < 10 * cache_bytes and rounds < 20:
            # Each round reads every face; between rounds the TTL keeps them, so
            # read them through different names (all three directories).
            for kind in ("open_id", "union_id", "user_id"):
                out = subprocess.run(shell(f"cat {mnt}/{kind}/* | wc -c"), capture_output=True, text=True, check=True)
                read_bytes += int(out.stdout.strip())
                if read_bytes >= 10 * cache_bytes:
                    break
            rounds += 1
        peak = m.peak_rss_kib()
        limit_kib = (cache_bytes >> 10) + 32 * 1024
        rows.append((f"peak RSS after reading {read_bytes >> 20} MiB with `--cache-size {cache}`",
                     peak / 1024, limit_kib / 1024, peak / limit_kib, "under cache + 32 MiB",
                     emu.stats().get("Face", 0), peak))
        m.stop()
        emu.stop()
    except Skip:
        pass
    finally:
        for started in reversed(STARTED):
            started.stop()
        for path in (mnt,):
            if os.path.ismount(path):
                subprocess.run(["umount", "-l", path], check=False)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"\nMachine: {os.cpu_count()} cores ({cpu}), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') >> 30} GiB; "
          f"kernel {os.uname().release}; {args.users} users with faces, {args.face_width}px faces, "
          f"{args.latency} API latency.\n")
    print("| scenario | facefs | baseline | ratio | target | face requests | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for name, ours, base, ratio, target, requests, rss in rows:
        if "RSS" in name:
            unit = "MiB"
        elif "bytes per" in name:
            unit = "B"
        elif "(ms)" in name:
            unit = "ms"
        elif "faults" in name or "byte-identical" in name:
            unit = "%"
        elif "requests" in name:
            unit = ""
        else:
            unit = "s"
        print(f"| {name} | {ours:.2f} {unit} | {base:.2f} {unit} | {ratio:.2f} | {target} | {requests} | {rss // 1024} MiB |")
    if args.only is None:
        print(f"\n429 answers in the limited run: {throttled}")


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def read_all(paths, threads):
    """Reads every path on `threads` threads; returns {path: bytes or errno}."""
    import concurrent.futures
    def one(path):
        try:
            with open(path, "rb") as f:
                return path, f.read()
        except OSError as e:
            return path, e.errno
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(one, paths))


def drop_page_cache():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def api_truth(emu, names, mnt, kind="open_id"):
    """The emulator's bytes for each file name, fetched straight from it."""
    token = json.load(urllib.request.urlopen(urllib.request.Request(
        f"{emu.url}/open-apis/auth/v3/tenant_access_token/internal", method="POST",
        data=json.dumps({"app_id": emu.app_id, "app_secret": emu.secret}).encode(),
        headers={"Content-Type": "application/json"})))["tenant_access_token"]
    truth = {}
    for name in names:
        user, cropped = (name[:-12], "true") if name.endswith(".cropped.jpg") else (name[:-4], "false")
        url = f"{emu.url}/open-apis/acs/v1/users/{user}/face?is_cropped={cropped}&user_id_type={kind}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        truth[os.path.join(mnt, kind, name)] = urllib.request.urlopen(req).read()
    return truth


def store(args, work, shm, mnt, tenant):
    """The on-disk store (--cache-dir): remounts, cold page cache, mount time, overhead, kill -9."""
    rows = []
    cache_dir = os.path.join(work, "store")
    with_store = ("--rate-limit", "10000", "--cache-dir", cache_dir)

    # a. rsync into an existing backup after a remount over a warm store.
    say(f"remount over a warm store of {args.users * 2} faces, {args.latency} latency")
    emu = Emulator(tenant, args.latency, None, args.face_width)
    m = Mount(emu, mnt, *with_store)
    backup = os.path.join(work, "backup")
    subprocess.run(["rsync", "-a", f"{mnt}/open_id/", backup], check=True)
    m.stop()
    files = len(os.listdir(backup))
    tmpfs = os.path.join(shm, "faces")
    shutil.copytree(backup, tmpfs)
    tmpfs_backup = os.path.join(work, "backup-of-tmpfs")
    shutil.copytree(backup, tmpfs_backup)
    before = emu.stats().get("Face", 0)
    # The first run after a remount is the one that matters (later ones are
    # served from the kernel's caches): a remount for each run. The tmpfs
    # runs alternate with them, so both see the same machine.
    def after_remounts(walk, base_walk, runs=9):
        timings, bases, lookups = [], [], 0
        for _ in range(runs):
            port = free_port()
            m = Mount(emu, mnt, *with_store, "--metrics-listen", str(port))
            timings.append(timed(walk))
            # The one LOOKUP of open_id/ itself is not a face's.
            lookups += fuse_ops(port, "lookup") - 1
            rss = m.peak_rss_kib()
            m.stop()
            bases.append(timed(base_walk))
        return statistics.median(timings), statistics.median(bases), lookups, rss
    warm, base, lookups, rss = after_remounts(["rsync", "-a", f"{mnt}/open_id/", backup],
                                              ["rsync", "-a", f"{tmpfs}/", tmpfs_backup])
    downloads = emu.stats().get("Face", 0) - before
    rows.append((f"`rsync -a` of {files} faces into an existing backup after a remount (warm store; median of 9; "
                 f"{lookups} LOOKUPs of faces in all)",
                 warm, base, warm / base, "0 downloads, 0 LOOKUPs, within 1.3x of the same rsync from tmpfs",
                 downloads, rss))
    before = emu.stats().get("Face", 0)
    warm, base, lookups, rss = after_remounts(shell(f"ls -l {mnt}/open_id > /dev/null"),
                                              shell(f"ls -l {tmpfs} > /dev/null"))
    rows.append((f"first `ls -l` of {files} faces after a remount (warm store; median of 9; "
                 f"{lookups} LOOKUPs of faces in all)",
                 warm, base, warm / base, "0 downloads, 0 LOOKUPs, within 1.3x of tmpfs",
                 emu.stats().get("Face", 0) - before, rss))

    # b. Every face read from the store with a cold page cache, as after a
    #    reboot: the page cache is dropped, then facefs mounts (its start-up
    #    scan runs beside the reads), against the same files read straight
    #    from the same disk after the same drop. Median of three each.
    say("reading every face from the store after dropping the page cache")
    before = emu.stats().get("Face", 0)
    runs = []
    for _ in range(3):
        drop_page_cache()
        m = Mount(emu, mnt, *with_store)
        runs.append(timed(shell(f"cat {mnt}/open_id/* > /dev/null")))
        if len(runs) < 3:
            m.stop()
    from_store = statistics.median(runs)
    downloads = emu.stats().get("Face", 0) - before
    runs = []
    for _ in range(3):
        drop_page_cache()
        runs.append(timed(shell(f"cat {backup}/* > /dev/null")))
    from_disk = statistics.median(runs)
    rows.append(("`cat` of every face from the store: page cache dropped, then mounted (median of 3)", from_store, from_disk,
                 from_store / from_disk, "within 2x of the same files read from the same disk", downloads,
                 m.peak_rss_kib()))
    m.stop()

    # c. Disk bytes per stored face beyond the face.
    stored = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(cache_dir, "facefs-v2"))
              if "/faces/" in r + "/" for n in ns]
    face_bytes = sum(os.path.getsize(os.path.join(backup, n)) for n in os.listdir(backup))
    apparent = sum(os.stat(p).st_size for p in stored)
    on_disk = sum(os.stat(p).st_blocks * 512 for p in stored)
    rows.append((f"disk bytes per stored face beyond the face ({len(stored)} faces; header alone "
                 f"{(apparent - face_bytes) / len(stored):.0f} B)",
                 (on_disk - face_bytes) / len(stored), 4096.0, (on_disk - face_bytes) / len(stored) / 4096,
                 "under one 4 KiB block", 0, 0))

    # d. kill -9 in the middle of a backup, then a remount.
    say("kill -9 of facefs in the middle of a backup")
    shutil.rmtree(cache_dir)
    m = Mount(emu, mnt, *with_store)
    names = sorted(os.listdir(os.path.join(mnt, "open_id")))
    killed_backup = os.path.join(work, "backup-killed")
    rsync = subprocess.Popen(["rsync", "-a", f"{mnt}/open_id/", killed_backup],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = emu.stats().get("Face", 0)
    while emu.stats().get("Face", 0) - start < files // 3:
        # The stats walk the emulator's whole request log: ask sparingly.
        time.sleep(0.1)
    m.proc.kill()
    m.proc.wait()
    rsync.wait()
    subprocess.run(["umount", "-l", mnt], check=False)
    truth = api_truth(emu, names, mnt)
    m = Mount(emu, mnt, *with_store)
    before = emu.stats().get("Face", 0)
    got = read_all(list(truth), 8)
    same = sum(1 for p in truth if got[p] == truth[p])
    rows.append((f"faces byte-identical to the API's after `kill -9` mid-backup and a remount",
                 100.0 * same / len(truth), 100.0, same / len(truth), "100%",
                 emu.stats().get("Face", 0) - before, m.peak_rss_kib()))
    m.stop()
    emu.stop()

    # e. Mount time over a large store, filled by `facefs prefetch`.
    users = args.stored // 2 + args.stored // 12 + 8
    say(f"filling a store of {args.stored} faces with facefs prefetch (tiny faces, no latency)")
    big = os.path.join(work, "big-store")
    emu = Emulator(users, "0s", None, 16)
    m = Mount(emu, mnt, "--rate-limit", "10000", "--cache-dir", big)
    filled = timed([FACEFS, "prefetch", mnt, "open_id", "--jobs", "16"], stderr=subprocess.DEVNULL)
    count = len(os.listdir(os.path.join(mnt, "open_id")))
    rows.append((f"`facefs prefetch` of {count} faces, no server latency, `--rate-limit 10000`",
                 filled, count / 10000, filled / (count / 10000), "(the rate-limit floor)", emu.stats().get("Face", 0),
                 m.peak_rss_kib()))
    m.stop()
    log = os.path.join(work, "big-store.log")
    drop_page_cache()
    start = time.perf_counter()
    m = Mount(emu, mnt, "--rate-limit", "10000", "--cache-dir", big, "--log-file", log, log_level="info")
    mounted = time.perf_counter() - start
    first = sorted(os.listdir(os.path.join(mnt, "open_id")))[0]
    with open(os.path.join(mnt, "open_id", first), "rb") as f:
        f.read()
    first_face = time.perf_counter() - start
    scan = None
    deadline = time.time() + 60
    while scan is None and time.time() < deadline:
        for line in open(log):
            if "scanned in" in line:
                scan = line.split("scanned in", 1)[1].split(";")[0].strip()
        time.sleep(0.1)
    rows.append((f"mount answering over a store of {count} faces, page cache dropped (first face read at "
                 f"{first_face:.2f} s; background scan took {scan})", mounted, 1.0, mounted, "within 1 s",
                 0, m.peak_rss_kib()))
    m.stop()
    emu.stop()
    return rows


def events(args, work, mnt, tenant):
    """--events: repeated backups past --ttl, and how soon a replaced face shows."""
    rows = []
    emu = Emulator(tenant, args.latency, None, args.face_width)
    log = os.path.join(work, "events.log")
    m = Mount(emu, mnt, "--rate-limit", "10000", "--events", "--ttl", "1s", "--log-file", log, log_level="info")
    deadline = time.time() + 30
    while "event long connection up" not in open(log).read():
        if time.time() > deadline:
            raise SystemExit("the event connection did not come up")
        time.sleep(0.05)
    files = len(os.listdir(os.path.join(mnt, "open_id")))
    backup = os.path.join(work, "backup-events")
    say(f"10 rsync runs of {files} faces with --events and --ttl 1s")
    before = emu.stats().get("Face", 0)
    start = time.perf_counter()
    for _ in range(10):
        subprocess.run(["rsync", "-a", f"{mnt}/open_id/", backup], check=True)
        time.sleep(1.1)
    took = time.perf_counter() - start
    downloads = emu.stats().get("Face", 0) - before
    rows.append((f"face requests over 10 `rsync -a` runs of {files} faces, `--events --ttl 1s` ({took:.0f} s)",
                 downloads, files, downloads / files, "the first run's, no more", downloads, m.peak_rss_kib()))

    say("replaced faces: how soon the mount shows them")
    ids = sorted(n[:-4] for n in os.listdir(os.path.join(mnt, "open_id")) if not n.endswith(".cropped.jpg"))
    worst, worst_downloads = 0.0, 0
    for k in range(5):
        target, source = ids[k], ids[-1 - k]
        path = os.path.join(mnt, "open_id", f"{target}.jpg")
        for _ in range(2):
            open(path, "rb").read()
        new = open(os.path.join(mnt, "open_id", f"{source}.jpg"), "rb").read()
        before = emu.stats().get("Face", 0)
        start = time.perf_counter()
        urllib.request.urlopen(urllib.request.Request(
            f"{emu.url}/_emulator/replace-face?open_id={target}&from={source}", method="POST")).read()
        while open(path, "rb").read() != new:
            if time.perf_counter() - start > 10:
                raise SystemExit("the replaced face did not show within 10 s")
            time.sleep(0.005)
        worst = max(worst, time.perf_counter() - start)
        worst_downloads = max(worst_downloads, emu.stats().get("Face", 0) - before)
    rows.append((f"a replaced face read new through the mount, page cache warm (worst of 5; at most "
                 f"{worst_downloads} downloads)", worst, 1.0, worst, "< 1 s, <= 2 downloads", worst_downloads,
                 m.peak_rss_kib()))
    m.stop()
    emu.stop()
    return rows


def restore(args, work, mnt):
    """--writable: putting a backup back after every face was wiped."""
    rows = []
    faces = args.restore_faces
    tenant = faces + faces // 6 + 8
    limit = args.limit
    say(f"restore of {faces} faces at {args.latency} latency, the server limited to {limit}/s")
    emu = Emulator(tenant, args.latency, limit, args.face_width)
    m = Mount(emu, mnt, "--rate-limit", str(limit))
    backup = os.path.join(work, "backup-restore")
    subprocess.run(["rsync", "-a", "--exclude=*.cropped.jpg", f"{mnt}/open_id/", backup], check=True)
    m.stop()
    names = sorted(os.listdir(backup))
    faces = len(names)

    def wiped_and_mounted():
        urllib.request.urlopen(urllib.request.Request(f"{emu.url}/_emulator/remove-faces", method="POST")).read()
        return Mount(emu, mnt, "--writable", "--rate-limit", str(limit), "--max-parallel", "16")

    # Each face costs one request, its upload: the lookups that find the
    # wiped faces gone are answered by the listing (fetched once, in the
    # background, after the API's first few "does not exist").
    floor = faces / limit
    for label, command in [
        ("`rsync -a` (one file at a time)", ["rsync", "-a", f"{backup}/", f"{mnt}/open_id/"]),
        ("`xargs -P 16 cp` (16 at a time)",
         shell(f"cd {backup} && ls | xargs -P 16 -I{{}} cp {{}} {mnt}/open_id/{{}}")),
    ]:
        m = wiped_and_mounted()
        before = emu.stats()
        took = timed(command)
        after = emu.stats()
        uploads = after.get("Upload", 0) - before.get("Upload", 0)
        asked = after.get("Face", 0) - before.get("Face", 0)
        lists = after.get("ListUsers", 0) - before.get("ListUsers", 0)
        throttled = after.get("Throttled", 0) - before.get("Throttled", 0)
        wrong = sum(1 for n in names[:: max(1, faces // 50)]
                    if open(os.path.join(mnt, "open_id", n), "rb").read() != open(os.path.join(backup, n), "rb").read())
        say(f"  {label}: {took:.1f} s, {uploads} uploads, {asked} faces asked for, {lists} listing pages, "
            f"{throttled} throttled, {wrong} of 50 checked differ")
        rows.append((f"restore of {faces} faces by {label}, server at {limit}/s, {args.latency} latency "
                     f"({uploads} uploads, {asked} faces asked for, {lists} listing pages, {throttled} 429s, {wrong} wrong)",
                     took, floor, took / floor,
                     "the uploads' floor at the server's rate (1 request a face)", uploads, m.peak_rss_kib()))
        m.stop()
    emu.stop()
    return rows


class Redis:
    """A redis-server on a free loopback port, without persistence."""

    def __init__(self, work, extra=()):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        # A directory of its own: a replica writes its master's data there.
        self.dir = tempfile.mkdtemp(prefix="redis-", dir=work)
        self.extra = list(extra)
        self.start()
        STARTED.append(self)

    def start(self):
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", self.dir, *self.extra],
                                     stdout=subprocess.DEVNULL)
        deadline = time.time() + 10
        while self.cli("PING") != "PONG":
            if time.time() > deadline:
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)

    def cli(self, *args):
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True)
        return out.stdout.strip()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    stop_master = stop


class Sentinels:
    """A master, its replica and three redis-sentinels (quorum 2) on free loopback ports."""

    NAME = "facefs"

    def __init__(self, work):
        self.master = Redis(work)
        self.replica = Redis(work, ("--replicaof", "127.0.0.1", str(self.master.port)))
        self.ports, self.procs = [], []
        for n in range(3):
            port = free_port()
            conf = os.path.join(self.master.dir, f"sentinel-{n}.conf")
            with open(conf, "w") as f:
                f.write(f"port {port}\nbind 127.0.0.1\ndir {self.master.dir}\n"
                        f"sentinel monitor {self.NAME} 127.0.0.1 {self.master.port} 2\n"
                        f"sentinel down-after-milliseconds {self.NAME} 1000\n"
                        f"sentinel failover-timeout {self.NAME} 10000\n")
            self.procs.append(subprocess.Popen(["redis-sentinel", conf], stdout=subprocess.DEVNULL))
            self.ports.append(port)
        STARTED.append(self)
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        self.url = f"redis+sentinel://{hosts}/{self.NAME}"
        deadline = time.time() + 30
        while not all(self.knows(p) for p in self.ports):
            if time.time() > deadline:
                raise SystemExit("the sentinels did not find each other and the replica")
            time.sleep(0.2)

    def knows(self, port):
        def count(what):
            out = subprocess.run(["redis-cli", "-p", str(port), "SENTINEL", what, self.NAME],
                                 capture_output=True, text=True).stdout
            return out.splitlines().count("name")
        return count("replicas") == 1 and count("sentinels") == 2

    def cli(self, *args):
        return self.master.cli(*args)

    def stop_master(self):
        self.master.stop()

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.master.stop()
        self.replica.stop()


def read_tree(path, threads=16):
    """Reads every file under `path` once; (ok, eio, other errors, wrong) against `truth`."""
    names = sorted(os.listdir(path))
    results = {"ok": 0, "eio": 0, "other": 0}

    def one(name):
        try:
            with open(os.path.join(path, name), "rb") as f:
                return name, f.read(), None
        except OSError as e:
            return name, None, e.errno

    from concurrent.futures import ThreadPoolExecutor
    got = {}
    with ThreadPoolExecutor(threads) as pool:
        for name, data, err in pool.map(one, names):
            if err is None:
                results["ok"] += 1
                got[name] = data
            elif err == 5:
                results["eio"] += 1
            else:
                results["other"] += 1
    return results, got


def fleet(args, work, tenant):
    """--redis: four mounts of one tenant against a server limited to 5/s."""
    rows = []
    limit = 5
    for run in args.fleet_runs.split(","):
        kill_redis = run != "up"
        emu = Emulator(tenant, args.latency, limit, args.face_width)
        redis = Redis(work) if run != "failover" else Sentinels(work)
        mounts = []
        for n in range(4):
            path = os.path.join(work, f"fleet{n}")
            os.makedirs(path, exist_ok=True)
            mounts.append(Mount(emu, path, "--rate-limit", str(limit), "--redis", redis.url, "--max-parallel", "16"))
        files = len(os.listdir(os.path.join(mounts[0].path, "open_id")))
        floor = files / limit
        label = {"up": "Redis up throughout", "killed": "Redis killed at half-time",
                 "failover": "Sentinel failover at half-time (master killed)"}[run]
        say(f"4 mounts each reading {files} faces, server at {limit}/s, {label} (floor {floor:.0f} s)")
        killed_at = []
        if kill_redis:
            def killer():
                time.sleep(floor / 2)
                say("  killing the Redis master")
                killed_at.append(time.time())
                redis.stop_master()
            import threading
            threading.Thread(target=killer, daemon=True).start()
        from concurrent.futures import ThreadPoolExecutor
        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(lambda m: read_tree(os.path.join(m.path, "open_id")), mounts))
        took = time.perf_counter() - start
        stats = emu.stats()
        # Every byte read checked against one mount's own reading after the run, from the emulator.
        truth_mount = outcomes[0][1]
        wrong = 0
        for results, got in outcomes:
            for name, data in got.items():
                whole = data.startswith(b"\xff\xd8") and data.rstrip(b"\0").endswith(b"\xff\xd9")
                if not whole or (name in truth_mount and data != truth_mount[name]):
                    wrong += 1
        ok = sum(r["ok"] for r, _ in outcomes)
        eio = sum(r["eio"] for r, _ in outcomes)
        other = sum(r["other"] for r, _ in outcomes)
        say(f"  {took:.0f} s; {stats.get('Face', 0)} downloads, {stats.get('Throttled', 0)} throttled, "
            f"{ok} reads ok, {eio} EIO, {other} other errors, {wrong} differing")
        if killed_at:
            # When the throttling came, in seconds after the kill.
            throttled = [(second - int(killed_at[0]), n) for second, _, n in emu.timeline() if n]
            say(f"  throttled answers by second after the kill: {throttled}")
            if args.timeline:
                around = [(second - int(killed_at[0]), a, n) for second, a, n in emu.timeline()
                          if -5 <= second - int(killed_at[0]) <= 30]
                say(f"  (second after the kill, answered, throttled): {around}")
        # Without Redis each mount downloads what it reads itself: the
        # floor of the downloads it needed is theirs at the server's rate.
        rows.append((f"4 mounts x {files} faces, server at {limit}/s, {label}: {stats.get('Face', 0)} downloads "
                     f"(floor {stats.get('Face', 0) / limit:.0f} s at {limit}/s), "
                     f"{stats.get('Throttled', 0)} 429s, {ok} ok / {eio} EIO / {other} other, {wrong} wrong bytes",
                     took, floor, took / floor,
                     "within 1.15x of files/5 s, downloads = files, 0 429s" if not kill_redis
                     else "within 1.3x of files/5 s, 0 EIO, <= 10 429s, no wrong byte",
                     stats.get("Face", 0), max(m.peak_rss_kib() for m in mounts)))
        if not kill_redis:
            used = int(next(l.split(":")[1] for l in redis.cli("INFO", "memory").splitlines()
                            if l.startswith("used_memory:")))
            keys = int(redis.cli("EVAL", "return #redis.call('KEYS', 'facefs:*:face:*')", "0") or 0)
            sizes = sum(len(d) for d in outcomes[0][1].values())
            say(f"  Redis: {used} bytes for {keys} faces of {sizes} bytes")
            rows.append((f"Redis bytes per shared face beyond the face ({keys} faces)",
                         (used - sizes) / max(keys, 1), 0, 0, "(measured)", 0, 0))
            # Warm reads: a fifth mount reads faces from Redis, then again from its own memory.
            path = os.path.join(work, "fleet-new")
            os.makedirs(path, exist_ok=True)
            new = Mount(emu, path, "--rate-limit", str(limit), "--redis", redis.url)
            names = sorted(n for n in os.listdir(os.path.join(path, "open_id")))[:200]
            def timed_reads():
                start = time.perf_counter()
                for name in names:
                    with open(os.path.join(path, "open_id", name), "rb") as f:
                        f.read()
                return (time.perf_counter() - start) / len(names)
            from_redis = timed_reads()
            local = timed_reads()
            rows.append(("a warm read from Redis (a mount that never read the face), per face (ms)",
                         from_redis * 1000, local * 1000, from_redis / max(local, 1e-9),
                         "(ms; baseline: the same read from the mount's memory)", 0, new.peak_rss_kib()))
            new.stop()
        for m in mounts:
            m.stop()
        redis.stop()
        emu.stop()
    return rows


def abuse(args, work, shm, mnt):
    """The bounds facefs promises under abuse, measured (issue 11's targets)."""
    import errno as errnos
    rows = []
    # a. Distinct absent names: memory must stop growing.
    say(f"{args.absent} stats of distinct absent names")
    emu = Emulator(40, "0s", None, 48)
    m = Mount(emu, mnt, "--rate-limit", "10000")
    d = os.path.join(mnt, "open_id")
    start = time.perf_counter()
    for i in range(args.absent):
        try:
            os.stat(os.path.join(d, f"ou_absent{i:09d}.jpg"))
        except FileNotFoundError:
            pass
        if i == 10_000:
            first = rss_kib(m.proc.pid)
        if i % 100_000 == 99_999:
            say(f"  {i + 1} stats, RSS {rss_kib(m.proc.pid) // 1024} MiB")
    took = time.perf_counter() - start
    growth = (rss_kib(m.proc.pid) - first) / 1024
    rows.append((f"RSS growth over {args.absent:,} absent-name stats after the first 10,000 ({took:.0f} s)",
                 growth, 8.0, growth / 8.0, "< 8 MiB", emu.stats().get("Face", 0), m.peak_rss_kib()))
    m.stop()
    emu.stop()

    # b. 100,000 users listed in all three directories.
    say("100,000 users listed in all three directories")
    emu = Emulator(100_000, "0s", None, 48)
    m = Mount(emu, mnt, "--rate-limit", "10000")
    names = {}
    for kind in ("open_id", "union_id", "user_id"):
        names[kind] = os.listdir(os.path.join(mnt, kind))
    peak = m.peak_rss_kib()
    rows.append(("peak RSS with 100,000 users listed in three directories, empty face cache",
                 peak / 1024, 128.0, peak / 1024 / 128, "<= 128 MiB", emu.stats().get("Face", 0), peak))
    tmp = os.path.join(shm, "names")
    os.makedirs(tmp)
    for name in names["open_id"]:
        open(os.path.join(tmp, name), "w").close()
    ls_fuse = median_time(shell(f"ls -f {mnt}/open_id > /dev/null"))
    ls_tmpfs = median_time(shell(f"ls -f {tmp} > /dev/null"))
    rows.append((f"warm `ls -f` of {len(names['open_id'])} names", ls_fuse, ls_tmpfs, ls_fuse / ls_tmpfs,
                 "within 3x of tmpfs", emu.stats().get("Face", 0), m.peak_rss_kib()))
    shutil.rmtree(tmp)
    m.stop()
    emu.stop()

    # c. 64 parallel answers of 16 MiB through a 32 MiB cache.
    say("64 parallel answers of 16 MiB")
    emu = Emulator(80, "0s", None, 48, pad="16MiB")
    m = Mount(emu, mnt, "--rate-limit", "10000", "--cache-size", "32MiB", "--max-parallel", "64")
    idle = rss_kib(m.proc.pid, "VmHWM")
    files = sorted(f for f in os.listdir(os.path.join(mnt, "open_id")) if not f.endswith(".cropped.jpg"))[:64]
    got = read_all([os.path.join(mnt, "open_id", f) for f in files], 64)
    failed = sum(1 for v in got.values() if isinstance(v, int))
    peak = m.peak_rss_kib()
    bound = 32 + 64 + 64 * 0.5
    rows.append((f"peak RSS above idle, 64 parallel 16 MiB answers, `--cache-size 32MiB` ({failed} failed)",
                 (peak - idle) / 1024, bound, (peak - idle) / 1024 / bound,
                 "<= cache + 64 MiB + 0.5 MiB per parallel download", emu.stats().get("Face", 0), peak))
    m.stop()
    emu.stop()

    # d. 30% injected faults of each kind: reads that succeed, wrong bytes, ENOENT.
    #    The right bytes come straight from the emulator; each read is one
    #    cold lookup and download through a fresh mount with the defaults.
    for fault in ("ServerError", "Reset", "CutShort", "Chunked", "EmptyBadRequest", "Throttle", "ExpiredToken", "Hang"):
        emu = Emulator(240, "0s", None, 48)
        token = json.load(urllib.request.urlopen(urllib.request.Request(
            f"{emu.url}/open-apis/auth/v3/tenant_access_token/internal", method="POST",
            data=json.dumps({"app_id": emu.app_id, "app_secret": emu.secret}).encode(),
            headers={"Content-Type": "application/json"})))["tenant_access_token"]
        m = Mount(emu, mnt, "--rate-limit", "10000", "--request-timeout", "1s")
        names = sorted(os.listdir(os.path.join(mnt, "open_id")))
        truth = {}
        for name in names:
            user, cropped = (name[:-12], "true") if name.endswith(".cropped.jpg") else (name[:-4], "false")
            url = f"{emu.url}/open-apis/acs/v1/users/{user}/face?is_cropped={cropped}&user_id_type=open_id"
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
            truth[os.path.join(mnt, "open_id", name)] = urllib.request.urlopen(req).read()
        urllib.request.urlopen(urllib.request.Request(f"{emu.url}/_emulator/faults?fault={fault}&rate=0.3", method="POST")).read()
        paths = list(truth)
        got = read_all(paths, 8)
        ok = sum(1 for p in paths if got[p] == truth[p])
        wrong = sum(1 for p in paths if isinstance(got[p], bytes) and got[p] != truth[p])
        enoent = sum(1 for p in paths if got[p] == errnos.ENOENT)
        say(f"  {fault}: {ok}/{len(paths)} ok, {wrong} wrong, {enoent} ENOENT")
        rows.append((f"reads at 30% `{fault}` faults ({wrong} wrong bytes, {enoent} ENOENT)",
                     100.0 * ok / len(paths), 99.0, ok / len(paths) / 0.99, ">= 99% succeed, 0 wrong, 0 ENOENT",
                     emu.stats().get("Face", 0), m.peak_rss_kib()))
        m.stop()
        emu.stop()
    rows.extend(probe_flood(mnt))
    return rows


def probe_flood(mnt):
    """300 threads probing names nobody listed, default settings (--rate-limit 5,
    64 workers): a listed face's cold read meanwhile, against the same read
    without the flood (issue 22: 41.5-46.6 s before the worker pool had lanes)."""
    rows = []
    say("300 threads probing absent names; a listed face read meanwhile")
    import threading
    emu = Emulator(40, "50ms", None, 48)
    m = Mount(emu, mnt)
    d = os.path.join(mnt, "open_id")
    listed = sorted(f for f in os.listdir(d) if not f.endswith(".cropped.jpg"))
    def cold_read(name):
        start = time.perf_counter()
        with open(os.path.join(d, name), "rb") as f:
            f.read()
        return time.perf_counter() - start
    quiet = cold_read(listed[0])
    stop = threading.Event()
    def probe(t):
        i = 0
        while not stop.is_set():
            try:
                os.stat(os.path.join(d, f"ou_probe{t}x{i}.jpg"))
            except OSError:
                pass
            i += 1
    probers = [threading.Thread(target=probe, args=(t,), daemon=True) for t in range(300)]
    for t in probers:
        t.start()
    time.sleep(3)
    flooded = cold_read(listed[1])
    stop.set()
    peak = m.peak_rss_kib()
    # The probes queued at 5 a second would take a minute: ending facefs ends them.
    m.proc.kill()
    subprocess.run(["umount", "-l", mnt], check=False)
    for t in probers:
        t.join(timeout=10)
    say(f"  {flooded:.2f} s under the flood, {quiet:.2f} s without")
    rows.append(("a listed face's cold read under 300 threads probing absent names, default settings (s)",
                 flooded, quiet, flooded / max(quiet, 1e-9), "<= 5 s", emu.stats().get("Face", 0), peak))
    emu.stop()
    return rows


if __name__ == "__main__":
    main()
