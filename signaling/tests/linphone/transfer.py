#!/usr/bin/env python3
"""A blind transfer through `signaling` between three real phones: Debian's `linphonec` (5.1).

alice, bob and carol REGISTER with digest authentication; alice calls bob and bob answers;
each phone plays its own tone (alice 400 Hz, bob 800 Hz, carol 1200 Hz) from a WAV file and
records what it hears. The transferor (bob, the callee, or alice, the caller: --transferor)
runs `transfer sip:carol@...`: linphone sends a REFER, signaling INVITEs carol and re-INVITEs
the transferee towards her. carol answers, the transferee and carol talk, then one of them
hangs up (--hangup). The checks: the phones' events, what each recording hears (a Goertzel
filter at the three tones, 0.25 s windows), the two CDR rows in SQLite (linked, both answered
with audio both ways, the first ended by the transfer), signaling's log.

With --attended the transfer is attended (RFC 3891): after talking to the transferee the
transferor runs `pause` (call 1 on hold, a=sendonly), `call sip:carol@...` (call 2), talks to
carol, then `transfer <call 1> --to-call <call 2>`: linphone sends a REFER on call 1's dialog
whose Refer-To is carol's address with `?Replaces=` call 2's dialog. signaling re-INVITEs carol
on her own dialog without SDP, re-INVITEs the transferee with her offer and hangs the
transferor up on both calls. The checks then expect three CDR rows, found by their parties and
links (not their order): call 1 and call 2 both `transferred_to` the new pairing, whose call_id
is call 1's plus ";transfer=1" and which is `transferred_from` call 1.

Python 3.11 standard library only; needs `linphonec` (apt-get install linphone-cli) and, for
--capture only, `tshark` (without it the run goes on without a capture).

    transfer.py --signaling BIN --base-port N --workdir DIR [--transferor bob|alice]
                [--attended] [--hangup transferee|carol] [--talk SECONDS] [--autoanswer] [--capture]
                [--log FILTER] [--deadline SECONDS] [--verbose]

Ports, all on 127.0.0.1 and all inside N..N+199 (N even):
    N        signaling SIP (UDP and TCP)        N+1      signaling metrics (TCP)
    N+2..N+4 alice, bob, carol SIP (UDP)
    N+10     alice RTP (video N+12, text N+14, each RTCP + 1); bob N+20; carol N+30
    N+100..N+199  signaling's relay range (its embedded media proxy's gRPC listener alone is
                  on a port the kernel picks: signaling has no option for it)
Every file goes under DIR (signaling runs in it: the embedded proxy makes `recordings/`
there): users.toml, tones/, cdr.db, signaling.log, <phone>/{linphonerc,home/,stdout.log,
liblinphone.log}, <phone>-heard.wav, and with --capture cap.pcapng and sip-ladder.txt.

Exit 0 with a one-line summary when every check passes; else exit 1 after printing what
failed, the run's progress, the tail of signaling's log and of each phone's output. Every
process it starts runs in its own process group and is killed on the way out (also on an
exception, SIGTERM, SIGINT, or the overall --deadline), and gets SIGKILL if this script dies.
"""
import argparse
import array
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import wave

TONES = {"alice": 400, "bob": 800, "carol": 1200}
LETTER = {"alice": "A", "bob": "B", "carol": "C"}
RATE = 8000
WINDOW = 0.25  # seconds per analysed window of a recording
T0 = time.monotonic()
PROGRESS = []  # the run's progress lines, printed on failure (or live with --verbose)
VERBOSE = False


def log(*parts):
    line = f"[{time.monotonic() - T0:6.2f}s] " + " ".join(str(p) for p in parts)
    PROGRESS.append(line)
    if VERBOSE:
        print(line, flush=True)


class Timeout(Exception):
    """The overall deadline passed, or the script was told to stop."""


def _on_alarm(signum, frame):
    raise Timeout("the overall deadline passed")


def _on_stop(signum, frame):
    raise Timeout(f"stopped by signal {signal.Signals(signum).name}")


# Children get SIGKILL when this script dies (even by SIGKILL): prctl(PR_SET_PDEATHSIG).
# Resolved here, not in the forked child. Every Popen that uses it happens before the
# reader threads start (preexec_fn and threads do not mix).
try:
    import ctypes

    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (ImportError, OSError, AttributeError):
    _PRCTL = None


def _die_with_parent():
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(argv, **kwargs):
    """A child in its own session (so its own process group), killed if we die."""
    return subprocess.Popen(argv, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def stop(proc, sig=signal.SIGTERM, grace=10.0):
    """`sig` to the process, then SIGKILL to its group after `grace` seconds."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(grace)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    if proc.poll() is None:
        kill_group(proc)


RC_TEMPLATE = """\
[sip]
sip_port={sip_port}
sip_tcp_port=0
sip_tls_port=0
bind_address=127.0.0.1
contact=sip:{user}@127.0.0.1:{sip_port}
guess_hostname=0
use_ipv6=0
register_only_when_network_is_up=0
register_only_when_upnp_is_ok=0
auto_send_ringing=1
inc_timeout=60
in_call_timeout=0
default_proxy=0
media_encryption=none

[rtp]
bind_address=127.0.0.1
audio_rtp_port={rtp_port}
video_rtp_port={vrtp_port}
text_rtp_port={trtp_port}
nortp_timeout=30

[net]
firewall_policy=0
mtu=1300

[sound]
echocancellation=0

[video]
capture=0
display=0
automatically_initiate=0
automatically_accept=0

[proxy_0]
reg_proxy=<sip:{sip};transport=udp>
reg_identity=sip:{user}@127.0.0.1
reg_expires=3600
reg_sendregister=1
publish=0
dial_escape_plus=0
quality_reporting_enabled=0
avpf=0

[auth_info_0]
username={user}
userid={user}
passwd={password}
realm=127.0.0.1
domain=127.0.0.1

[audio_codec_0]
mime=PCMU
rate=8000
channels=1
enabled=1

[audio_codec_1]
mime=PCMA
rate=8000
channels=1
enabled=1

[audio_codec_2]
mime=opus
rate=48000
channels=2
enabled=0

[audio_codec_3]
mime=speex
rate=16000
channels=1
enabled=0

[audio_codec_4]
mime=speex
rate=8000
channels=1
enabled=0

[audio_codec_5]
mime=G729
rate=8000
channels=1
enabled=0

[audio_codec_6]
mime=speex
rate=32000
channels=1
enabled=0
"""


class Phone:
    """One linphonec driven through stdin; what it prints accumulates in `buf`."""

    def __init__(self, name, workdir, sip, sip_port, rtp_port):
        self.name, self.sip, self.sip_port, self.rtp_port = name, sip, sip_port, rtp_port
        self.dir = os.path.join(workdir, name)
        self.home = os.path.join(self.dir, "home")
        self.rc = os.path.join(self.dir, "linphonerc")
        self.buf, self.transcript, self.cursor = "", "", 0
        self.lock, self.proc, self.out = threading.Lock(), None, None

    def spawn(self, linphonec):
        # Without $HOME/.local/share/linphone linphonec never opens its SIP socket.
        os.makedirs(os.path.join(self.home, ".local", "share", "linphone"))
        with open(self.rc, "w") as f:  # a fresh file each run: linphonec rewrites it
            f.write(RC_TEMPLATE.format(
                user=self.name, password=f"{self.name}-secret", sip=self.sip,
                sip_port=self.sip_port, rtp_port=self.rtp_port,
                vrtp_port=self.rtp_port + 2, trtp_port=self.rtp_port + 4))
        self.out = open(os.path.join(self.dir, "stdout.log"), "w")
        env = dict(os.environ, HOME=self.home,
                   XDG_DATA_HOME=os.path.join(self.home, ".local", "share"),
                   XDG_CONFIG_HOME=os.path.join(self.home, ".config"),
                   XDG_CACHE_HOME=os.path.join(self.home, ".cache"))
        self.proc = spawn(
            [linphonec, "-c", self.rc, "-l", os.path.join(self.dir, "liblinphone.log"), "-d", "6"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, cwd=self.home)

    def start_reader(self):
        threading.Thread(target=self._read, name=f"read-{self.name}", daemon=True).start()

    def _read(self):
        while True:
            try:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
            except (OSError, ValueError):  # ValueError: kill() closed the pipe under us
                return
            if not chunk:
                return
            text = chunk.decode("utf-8", "replace")
            with self.lock:
                self.buf += text
                self.transcript += text
            try:
                self.out.write(text)
                self.out.flush()
            except ValueError:  # closed on the way out
                pass

    def send(self, line):
        with self.lock:
            self.transcript += f"\n>>> {line}\n"
        try:
            self.out.write(f"\n>>> {line}\n")
            self.proc.stdin.write((line + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as e:
            raise AssertionError(f"{self.name}: cannot send {line!r}: linphonec gone "
                                 f"(exit {self.proc.poll()}): {e}")

    def wait(self, pattern, timeout=10.0, what=None):
        """The first match of `pattern` after the cursor (which then moves past it)."""
        rx, deadline = re.compile(pattern), time.monotonic() + timeout
        while True:
            with self.lock:
                m = rx.search(self.buf, self.cursor)
                if m:
                    self.cursor = m.end()
                    return m
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name}: linphonec exited {self.proc.returncode} "
                                     f"waiting for {what or repr(pattern)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {what or repr(pattern)} within {timeout:g} s")
            time.sleep(0.05)

    def cmd(self, line, pattern, timeout=10.0, what=None):
        self.send(line)
        return self.wait(pattern, timeout, what)

    def wait_registered(self, timeout=15.0):
        # linphonec 5.1 prints nothing when it registers: poll `status register`.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.cmd("status register",
                         r"(registered, identity=\S+ duration=\d+|registered=-?\d+|"
                         r"registration in progress|not registered)", 5, "`status register` answer")
            if m.group(0).startswith("registered, identity="):
                return m.group(0)
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: not registered within {timeout:g} s")

    def quit(self):
        if self.proc and self.proc.poll() is None:
            try:
                self.send("quit")
            except AssertionError:
                pass

    def kill(self):
        if self.proc:
            if self.proc.poll() is None:
                kill_group(self.proc)
            for pipe in (self.proc.stdin, self.proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
        if self.out:
            self.out.close()

    def tail(self, lines=30):
        with self.lock:
            return self.transcript.splitlines()[-lines:]


def write_tone(path, hz, seconds):
    """A 16-bit mono 8 kHz sine at half of full scale (a whole number of cycles per second,
    so one second repeats seamlessly)."""
    second = array.array("h", (round(16383 * math.sin(2 * math.pi * hz * i / RATE))
                               for i in range(RATE)))
    if sys.byteorder == "big":
        second.byteswap()
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(second.tobytes() * max(1, math.ceil(seconds)))


def timeline(path):
    """What a recording hears, per WINDOW: a phone's letter (A, B, C) when its tone holds
    over 80 % of the three tones' power and the level is over 5 % of full scale (RMS), '.'
    for silence, '?' for anything else."""
    with wave.open(path) as w:
        channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if channels != 1 or width != 2:
        raise AssertionError(f"{path}: {channels} channels of {8 * width} bits, not 16-bit mono")
    samples = array.array("h")
    samples.frombytes(raw)
    if sys.byteorder == "big":
        samples.byteswap()
    coefficients = {name: 2 * math.cos(2 * math.pi * hz / rate) for name, hz in TONES.items()}
    size, labels = int(rate * WINDOW), []
    for start in range(0, len(samples) - size + 1, size):
        segment = [x / 32768.0 for x in samples[start:start + size]]
        rms = math.sqrt(sum(x * x for x in segment) / size)
        powers = {}
        for name, k in coefficients.items():  # Goertzel
            s1 = s2 = 0.0
            for x in segment:
                s1, s2 = x + k * s1 - s2, s1
            powers[name] = s1 * s1 + s2 * s2 - k * s1 * s2
        total = sum(powers.values()) or 1.0
        best = max(powers, key=powers.get)
        if rms <= 0.05:
            labels.append(".")
        elif powers[best] / total > 0.8:
            labels.append(LETTER[best])
        else:
            labels.append("?")
    return "".join(labels)


def runs(labels):
    """'AAAA..CC' as 'A 1.00s, . 0.50s, C 0.50s'."""
    out = [f"{m.group(1)} {len(m.group(0)) * WINDOW:.2f}s" for m in re.finditer(r"(.)\1*", labels)]
    return ", ".join(out) or "nothing"


def check_hears(checks, path, expected, talk):
    """`expected` (phone names) heard in this order, each for most of a pairing, and no other
    phone's tone at all."""
    name = os.path.basename(path)
    if not os.path.exists(path):
        checks.append((False, f"{name} exists"))
        return
    labels = timeline(path)
    want = [LETTER[e] for e in expected]
    wrong = sorted({c for c in labels if c in LETTER.values() and c not in want})
    heard = [labels.count(c) * WINDOW for c in want]
    ordered = all(labels.rfind(a) < labels.find(b) for a, b in zip(want, want[1:]))
    covered = sum(heard) >= 0.75 * len(labels) * WINDOW if labels else False
    enough = all(h >= max(0.5, talk - 1.5) for h in heard)
    ok = not wrong and ordered and covered and enough
    checks.append((ok, f"{name} hears {' then '.join(expected)}: {runs(labels)}"))


def check_media(checks, rows, talk):
    """Every row answered, with a clean media verdict and audio both ways for most of a
    pairing."""
    minimum = int(talk * 25)  # half of 50 packets a second
    for r in rows:
        checks.append((r["disposition"] == "answered" and r["media_verdict"] == "ok"
                       and (r["caller_audio_packets"] or 0) >= minimum
                       and (r["callee_audio_packets"] or 0) >= minimum,
                       f"{r['call_id']}: {r['disposition']}, verdict {r['media_verdict']},"
                       f" packets {r['caller_audio_packets']}/{r['callee_audio_packets']}"
                       f" (>= {minimum} each)"))


def free(port, kind):
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def tail_lines(path, lines):
    try:
        with open(path, errors="replace") as f:
            text = re.sub(r"\x1b\[[0-9;]*m", "", f.read())
    except OSError as e:
        return [f"({e})"]
    return text.splitlines()[-lines:]


# Files and folders this script makes in --workdir: removed first, so DIR can be reused.
ARTIFACTS = ("users.toml", "tones", "cdr.db", "cdr.db-wal", "cdr.db-shm",
             "cdr.spool", "signaling.log", "recordings", "alice", "bob", "carol",
             "alice-heard.wav", "bob-heard.wav", "carol-heard.wav", "cap.pcapng", "tshark.log",
             "sip-ladder.txt")


def main():
    global VERBOSE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--signaling", required=True, help="the signaling binary")
    ap.add_argument("--base-port", required=True, type=int,
                    help="even N: every port used is in N..N+199")
    ap.add_argument("--workdir", required=True, help="every file goes here; signaling runs here")
    ap.add_argument("--transferor", choices=("bob", "alice"), default="bob",
                    help="bob (the callee) or alice (the caller) sends the REFER")
    ap.add_argument("--hangup", choices=("transferee", "carol"), default="carol",
                    help="who hangs up the call with carol at the end")
    ap.add_argument("--attended", action="store_true",
                    help="an attended transfer: the transferor holds the call, calls carol, "
                         "then joins them (REFER with Replaces)")
    ap.add_argument("--talk", type=float, default=4.0, help="seconds of audio per pairing")
    ap.add_argument("--autoanswer", action="store_true", help="carol auto-answers (else `answer`)")
    ap.add_argument("--capture", action="store_true",
                    help="tshark the loopback traffic into cap.pcapng (skipped without tshark)")
    ap.add_argument("--log", default="info", help="signaling's --log filter")
    ap.add_argument("--deadline", type=float, default=None,
                    help="overall limit in seconds [default: 80 + 2 x --talk]")
    ap.add_argument("--verbose", action="store_true", help="print the progress as it goes")
    args = ap.parse_args()
    VERBOSE = args.verbose

    base = args.base_port
    if base % 2 or not 1024 <= base <= 65535 - 199:
        ap.error("--base-port: an even port from 1024 to 65336")
    if args.talk < 1:
        ap.error("--talk: at least 1 second")
    deadline = args.deadline or 80 + (3 if args.attended else 2) * args.talk
    sip = f"127.0.0.1:{base}"
    metrics = f"127.0.0.1:{base + 1}"
    relay = f"{base + 100}-{base + 199}"
    phone_ports = {"alice": (base + 2, base + 10), "bob": (base + 3, base + 20),
                   "carol": (base + 4, base + 30)}
    workdir = os.path.abspath(args.workdir)
    signaling_bin = os.path.abspath(args.signaling)
    xname = args.transferor
    yname = "alice" if xname == "bob" else "bob"
    scenario = (f"{xname} transfers {yname} to carol{' (attended)' if args.attended else ''}, "
                f"{'carol' if args.hangup == 'carol' else yname} hangs up")

    checks = []  # (ok, what)
    failure = None  # why the scenario stopped short, if it did
    procs = {}  # name -> Popen (signaling, tshark)
    phones = {}
    signaling_log = os.path.join(workdir, "signaling.log")

    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_stop)
    signal.signal(signal.SIGINT, _on_stop)
    signal.alarm(math.ceil(deadline))
    try:
        linphonec = shutil.which("linphonec")
        if not linphonec:
            raise AssertionError("linphonec is not installed (apt-get install linphone-cli)")
        if not os.access(signaling_bin, os.X_OK):
            raise AssertionError(f"no signaling binary at {signaling_bin}")
        busy = [p for p in range(base, base + 200) if not free(p, socket.SOCK_DGRAM)]
        busy += [p for p in (base, base + 1) if not free(p, socket.SOCK_STREAM)]
        if busy:
            raise AssertionError(f"ports in use in {base}-{base + 199}: {sorted(set(busy))}")

        os.makedirs(workdir, exist_ok=True)
        for name in ARTIFACTS:
            path = os.path.join(workdir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
        users = os.path.join(workdir, "users.toml")
        with open(users, "w") as f:
            for name in TONES:
                f.write(f'[users.{name}]\npassword = "{name}-secret"\n')
        os.makedirs(os.path.join(workdir, "tones"))
        for name, hz in TONES.items():  # long enough never to run out before the deadline
            write_tone(os.path.join(workdir, "tones", f"{name}.wav"), hz, deadline + 5)

        if args.capture:
            if shutil.which("tshark"):
                tshark_log = os.path.join(workdir, "tshark.log")
                with open(tshark_log, "w") as err:
                    procs["tshark"] = spawn(
                        ["tshark", "-q", "-i", "lo", "-f", f"udp portrange {base}-{base + 199}",
                         "-w", os.path.join(workdir, "cap.pcapng")],
                        stdout=subprocess.DEVNULL, stderr=err)
                started = time.monotonic() + 5
                while time.monotonic() < started and procs["tshark"].poll() is None:
                    if "Capturing on" in "".join(tail_lines(tshark_log, 5)):
                        break
                    time.sleep(0.1)
                if procs["tshark"].poll() is not None:
                    log("tshark could not capture (going on without):",
                        " | ".join(tail_lines(tshark_log, 3)))
                    del procs["tshark"]
                else:
                    log("tshark capturing")
            else:
                log("tshark is not installed: no capture")

        env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALING_")}
        env["NO_COLOR"] = "1"
        with open(signaling_log, "w") as out:
            procs["signaling"] = spawn(
                [signaling_bin, "--sip", sip, "--ports", relay, "--max-calls", "20",
                 "--users", users, "--cdr", f"sqlite://{workdir}/cdr.db",
                 "--cdr-spool", os.path.join(workdir, "cdr.spool"), "--metrics", metrics,
                 "--keepalive", "3s", "--log", args.log],
                stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=env)
        sig = procs["signaling"]

        def siglog():
            return "\n".join(tail_lines(signaling_log, 100000))

        def cdr_rows():
            db = sqlite3.connect(os.path.join(workdir, "cdr.db"))
            db.row_factory = sqlite3.Row
            try:
                rows = [dict(r) for r in db.execute("select * from cdr order by rowid")]
            finally:
                db.close()
            shown = ("call_id", "caller", "callee", "disposition", "hangup_side", "end_reason",
                     "transferred_from", "transferred_to", "caller_audio_packets",
                     "callee_audio_packets", "media_verdict")
            for r in rows:
                log("CDR", {k: r.get(k) for k in shown})
            return rows

        started = time.monotonic() + 15
        while "signaling listening" not in siglog():
            if sig.poll() is not None:
                raise AssertionError(f"signaling exited {sig.returncode} at start")
            if time.monotonic() > started:
                raise AssertionError("signaling did not start within 15 s")
            time.sleep(0.05)
        log("signaling up")

        for name, (sip_port, rtp_port) in phone_ports.items():
            phones[name] = Phone(name, workdir, sip, sip_port, rtp_port)
            phones[name].spawn(linphonec)
        for phone in phones.values():  # threads only once every child is forked
            phone.start_reader()
        alice, bob, carol = phones["alice"], phones["bob"], phones["carol"]
        for name, phone in phones.items():
            log(name, phone.wait_registered())
            phone.cmd("soundcard use files", r"Using wav files instead of soundcard")
            phone.send(f"play {workdir}/tones/{name}.wav")
            phone.send(f"record {workdir}/{name}-heard.wav")
        if args.autoanswer:
            carol.cmd("autoanswer enable", r"Auto answer enabled")

        m = alice.cmd(f"call sip:bob@{sip}", r"Establishing call id to \S+, assigned id (\d+)",
                      what="the call to bob placed")
        call_ids = {"alice": m.group(1)}  # each phone's id of call 1 (alice <-> bob)
        m = bob.wait(r"Receiving new incoming call from (\S+), assigned id (\d+)", 15,
                     "the incoming call from alice")
        call_ids["bob"] = m.group(2)
        log("bob rings:", m.group(0))
        bob.send("answer")
        bob.wait(r"Call \d+ with \S+ connected\.", 10, "the call connected")
        alice.wait(r"Call \d+ with \S+ connected\.", 10, "the call connected")
        alice.wait(r"Media streams established", 10, "media streams established")
        log("alice <-> bob connected")
        time.sleep(args.talk)

        x, y = phones[xname], phones[yname]
        if args.attended:
            # The transferor holds call 1 and calls carol (call 2); they talk.
            one = call_ids[xname]
            x.cmd("pause", rf"Call {one} with \S+ is now paused\.", 10, "call 1 paused")
            y.wait(r"has been paused by", 10, "call 1 paused by the other side")
            log(f"{xname} paused call {one}")
            m = x.cmd(f"call sip:carol@{sip}", r"Establishing call id to \S+, assigned id (\d+)",
                      what="the call to carol placed")
            two = m.group(1)
            m = carol.wait(r"Receiving new incoming call from (\S+), assigned id \d+", 15,
                           "the call from the transferor")
            log("carol rings:", m.group(0))
            checks.append((xname in m.group(1), f"carol's first call comes from {xname}: "
                           f"{m.group(1)}"))
            if not args.autoanswer:
                carol.send("answer")
            carol.wait(r"Call \d+ with \S+ connected\.", 10,
                       "the call from the transferor connected")
            carol.wait(r"Media streams established", 10, "media streams established")
            x.wait(rf"Call {two} with \S+ connected\.", 10, "call 2 connected")
            x.wait(rf"Media streams established with \S+ for call {two}", 10,
                   "call 2's media streams established")
            log(f"{xname} <-> carol connected (call {two})")
            time.sleep(args.talk)

            # The attended transfer: a REFER with Replaces (call 2's dialog) on call 1.
            x.cmd(f"transfer {one} --to-call {two}", r"Performing attended transfer", 10,
                  "linphone's 'Performing attended transfer'")
            ended = set()
            while len(ended) < 2:  # both of the transferor's calls, in either order
                m = x.wait(rf"Call ({one}|{two}) with \S+ ended", 15,
                           f"the end of calls {one} and {two} (ended: {sorted(ended) or 'none'})")
                ended.add(m.group(1))
            started = time.monotonic() + 10
            while "call transferred" not in siglog():
                if time.monotonic() > started:
                    raise AssertionError("signaling did not log 'call transferred' within 10 s")
                time.sleep(0.05)
            log(f"{yname} <-> carol joined; {xname}'s calls both ended")
            time.sleep(args.talk)

            hanger, other = (carol, y) if args.hangup == "carol" else (y, carol)
            hanger.send("terminate")
            hanger.wait(r"Call \d+ with \S+ ended", 10, "its call ended")
            other.wait(r"Call \d+ with \S+ ended", 10, "the call ended by the other side")
            log(f"{hanger.name} hung up")
        else:
            x.send(f"transfer sip:carol@{sip}")
            m = carol.wait(r"Receiving new incoming call from (\S+), assigned id \d+", 15,
                           "the transferred call")
            log("carol rings:", m.group(0))
            checks.append((yname in m.group(1), f"carol's call comes from {yname}: {m.group(1)}"))
            if not args.autoanswer:
                carol.send("answer")
            carol.wait(r"Call \d+ with \S+ connected\.", 10, "the transferred call connected")
            carol.wait(r"Media streams established", 10, "media streams established")
            x.wait(r"has been transfered", 10, "linphone's 'has been transfered'")
            x.wait(r"Call \d+ with \S+ ended", 10, "its call ended by the transfer")
            log(f"{yname} <-> carol connected; {xname} transferred and gone")
            time.sleep(args.talk)

            hanger, other = (carol, y) if args.hangup == "carol" else (y, carol)
            hanger.send("terminate")
            hanger.wait(r"Call \d+ with \S+ ended", 10, "its call ended")
            other.wait(r"Call \d+ with \S+ ended", 10, "the call ended by the other side")
            log(f"{hanger.name} hung up")
        for phone in phones.values():
            phone.quit()
        quitting = time.monotonic() + 6
        for phone in phones.values():
            try:
                phone.proc.wait(max(0.1, quitting - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{phone.name}: linphonec did not quit within 6 s, killed")
            phone.kill()
        sig.send_signal(signal.SIGTERM)  # flushes the CDR writer
        sig.wait(20)
        log("signaling stopped, exit", sig.returncode)
        checks.append((sig.returncode == 0, f"signaling exits 0 on SIGTERM: {sig.returncode}"))

        if args.attended:
            # What each phone heard. The transferee hears the transferor, also while on hold
            # (linphone holds with a=sendonly and keeps sending its file), then carol; the
            # transferor's recording stops while its call is paused, so it hears the
            # transferee then carol; carol hears the transferor then the transferee.
            check_hears(checks, f"{workdir}/{yname}-heard.wav", [xname, "carol"], args.talk)
            check_hears(checks, f"{workdir}/{xname}-heard.wav", [yname, "carol"], args.talk)
            check_hears(checks, f"{workdir}/carol-heard.wav", [xname, yname], args.talk)

            rows = cdr_rows()
            checks.append((len(rows) == 3, f"three CDR rows: {len(rows)}"))
            xside = "callee" if xname == "bob" else "caller"
            yside = "caller" if xside == "callee" else "callee"
            # By their parties and links, not their order (rows are written as calls end).
            first = next((r for r in rows if (r["caller"], r["callee"]) == ("alice", "bob")), None)
            third = first and next((r for r in rows
                                    if r["call_id"] == f"{first['call_id']};transfer=1"), None)
            second = next((r for r in rows if r is not first and r is not third), None)
            checks.append((first is not None, "a row alice -> bob (call 1)"))
            checks.append((third is not None, "a row keyed call 1's call_id + ';transfer=1'"))
            if first and second and third:
                checks.append(((second["caller"], second["callee"]) == (xname, "carol"),
                               f"call 2's row {xname} -> carol: "
                               f"{second['caller']} -> {second['callee']}"))
                # carol takes the transferor's side of call 1; the transferee keeps its own.
                checks.append(((third[xside], third[yside]) == ("carol", yname),
                               f"the new row has carol as the {xside}, {yname} as the {yside}: "
                               f"{third['caller']} -> {third['callee']}"))
                checks.append((first["transferred_to"] == third["call_id"]
                               and second["transferred_to"] == third["call_id"]
                               and third["transferred_from"] == first["call_id"]
                               and not second["transferred_from"],
                               f"rows linked: {first['call_id']} -> {first['transferred_to']}, "
                               f"{second['call_id']} -> {second['transferred_to']}, "
                               f"{third['call_id']} <- {third['transferred_from']}"))
                reason = first["end_reason"] or ""
                checks.append((first["hangup_side"] == xside
                               and f"transferred by the {xside} ({xname})" in reason,
                               f"call 1 ended by the {xside}'s transfer: {first['hangup_side']} / "
                               f"{reason!r}"))
                reason = second["end_reason"] or ""
                checks.append((second["hangup_side"] == "caller"
                               and f"transferred (attended) by the caller ({xname})" in reason,
                               f"call 2 ended by the caller's attended transfer: "
                               f"{second['hangup_side']} / {reason!r}"))
                want = xside if args.hangup == "carol" else yside
                checks.append((third["hangup_side"] == want,
                               f"the new row hung up by the {want}: {third['hangup_side']}"))
            check_media(checks, rows, args.talk)
        else:
            # What each phone heard: the transferee's recording spans both pairings.
            check_hears(checks, f"{workdir}/{xname}-heard.wav", [yname], args.talk)
            check_hears(checks, f"{workdir}/carol-heard.wav", [yname], args.talk)
            check_hears(checks, f"{workdir}/{yname}-heard.wav", [xname, "carol"], args.talk)

            rows = cdr_rows()
            checks.append((len(rows) == 2, f"two CDR rows: {len(rows)}"))
            if len(rows) == 2:
                first, second = rows
                xside = "callee" if xname == "bob" else "caller"
                yside = "caller" if xside == "callee" else "callee"
                checks.append(((first["caller"], first["callee"]) == ("alice", "bob"),
                               f"row 1 alice -> bob: {first['caller']} -> {first['callee']}"))
                # carol takes the transferor's side of the call; the transferee keeps its own.
                checks.append(((second[xside], second[yside]) == ("carol", yname),
                               f"row 2 has carol as the {xside}, {yname} as the {yside}: "
                               f"{second['caller']} -> {second['callee']}"))
                checks.append((first["transferred_to"] == second["call_id"]
                               and second["transferred_from"] == first["call_id"],
                               f"rows linked: {first['call_id']} -> {first['transferred_to']}, "
                               f"{second['call_id']} <- {second['transferred_from']}"))
                reason = first["end_reason"] or ""
                checks.append((first["hangup_side"] == xside and "transferred by" in reason
                               and xname in reason,
                               f"row 1 ended by the {xside}'s transfer: {first['hangup_side']} / "
                               f"{reason!r}"))
                want = xside if args.hangup == "carol" else yside
                checks.append((second["hangup_side"] == want,
                               f"row 2 hung up by the {want}: {second['hangup_side']}"))
                check_media(checks, rows, args.talk)
        text = siglog()
        for needle in ("transfer accepted", "call transferred"):
            checks.append((needle in text, f"signaling logged {needle!r}"))
        for level in (" WARN ", " ERROR "):
            lines = [l for l in text.splitlines() if level in l]
            checks.append((not lines, f"no{level}lines in signaling.log"
                           + "".join("\n    " + l[:300] for l in lines)))
    except (AssertionError, Timeout) as e:
        failure = str(e)
    except Exception as e:  # a bug here, or the system: still clean up and report
        import traceback
        failure = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the clean-up is bounded: let it finish
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for phone in phones.values():
            phone.quit()
        for phone in phones.values():
            if phone.proc and phone.proc.poll() is None:
                try:
                    phone.proc.wait(3)
                except subprocess.TimeoutExpired:
                    pass
            phone.kill()
        if "signaling" in procs:
            stop(procs["signaling"], signal.SIGTERM, 10)
        if "tshark" in procs:
            time.sleep(0.5)
            stop(procs["tshark"], signal.SIGTERM, 10)
            try:
                with open(os.path.join(workdir, "sip-ladder.txt"), "w") as f:
                    subprocess.run(
                        ["tshark", "-r", os.path.join(workdir, "cap.pcapng"), "-Y", "sip",
                         "-T", "fields", "-e", "frame.time_relative", "-e", "udp.srcport",
                         "-e", "udp.dstport", "-e", "sip.Request-Line", "-e", "sip.Status-Line",
                         "-e", "sip.CSeq"], stdout=f, stderr=subprocess.DEVNULL, timeout=30)
            except (OSError, subprocess.SubprocessError) as e:
                log("no SIP ladder:", e)

    failed = [what for ok, what in checks if not ok]
    elapsed = time.monotonic() - T0
    if failure is None and not failed:
        print(f"transfer.py: PASS {len(checks)} checks ({scenario}, talk {args.talk:g} s) "
              f"in {elapsed:.1f} s; ports {base}-{base + 199}")
        return 0
    first = failure.splitlines()[0] if failure else failed[0].splitlines()[0]
    print(f"transfer.py: FAIL ({scenario}) after {elapsed:.1f} s: {first}")
    if failure and "\n" in failure:
        print(failure)
    if not VERBOSE and PROGRESS:
        print("--- progress")
        print("\n".join(PROGRESS))
    if checks:
        print("--- checks")
    for ok, what in checks:
        print(("PASS " if ok else "FAIL ") + what)
    if "signaling" in procs:
        print(f"--- {signaling_log} (last 40 lines)")
        print("\n".join(tail_lines(signaling_log, 40)))
    for name, phone in phones.items():
        print(f"--- {name}'s linphonec output (last 30 lines; all in {phone.dir}/stdout.log)")
        print("\n".join(phone.tail(30)))
    print(f"--- everything is in {workdir}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
